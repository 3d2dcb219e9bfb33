"""Hostile input never crashes fedsim: fuzzed scenarios are accepted or rejected with one line that
names the field, and the small ones validation accepts run to completion (or stop with a
FedsimError); output directories are never clobbered and unusable ones fail before the run."""

import json
import math
import uuid

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attacks
import strategies
from fedsim.errors import FedsimError
from fedsim.runner import Run
from fedsim.scenario import Scenario, ScenarioError, load, parse

SECTIONS = [
    "name",
    "seed",
    "mode",
    "rounds",
    "dataset",
    "backbone",
    "partition",
    "peers",
    "topology",
    "strategy",
    "training",
    "evaluation",
    "engine",
    "checkpoint",
    "output",
    "probes",
    "bogus",
]
FIELDS = [
    "name",
    "kind",
    "alpha",
    "k",
    "window",
    "count",
    "byzantine",
    "byzantine_fraction",
    "attack",
    "degree",
    "p",
    "fanout",
    "params",
    "f",
    "lr",
    "batch_size",
    "local_steps",
    "optimizer",
    "every",
    "peers",
    "backend",
    "num_actors",
    "data_dir",
    "typo",
    "omniscient",
    "momentum",
    "val_fraction",
]
NAMES = [
    "fedavg",
    "krum",
    "bristle",
    "median",
    "sign_flip",
    "alie",
    "none",
    "mnist10k",
    "identity",
    "nope",
    "iid",
    "dirichlet",
    "ring",
    "push_gossip",
    "star",
    "sgd",
    "adam",
    "ray",
    "local",
    "federated",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.sampled_from(FIELDS), c, max_size=4)),
    max_leaves=8,
)
scenarios = st.dictionaries(st.sampled_from(SECTIONS), values, max_size=8)

EXAMPLES = 500


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(scenarios)
def test_fuzzed_scenarios_accept_or_one_line_error(data):
    try:
        sc = parse(data)
    except ScenarioError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith("scenario: ") and len(msg) < 2000
        return
    assert isinstance(sc, Scenario)
    assert sc.peers.num_byzantine < sc.peers.count and sc.rounds >= 1
    assert math.isfinite(sc.training.lr)


def _laughs(width: int, levels: int) -> str:
    """A billion-laughs-shaped scenario: ``levels`` aliases, each tripling the one before."""
    lines = ["peers:", "  attack:", "    params:", f"      l0: &l0 [{', '.join(['1'] * width)}]"]
    lines += [f"      l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# YAML text: arbitrary characters, and YAML-shaped documents with anchors, aliases, merges, tags,
# deep nesting and long flows (the documents a careless or hostile user writes)
yaml_atoms = st.sampled_from(
    ["rounds", "peers", "count", "&a", "*a", "&b", "*b", "<<:", "- ", ": ", "[", "]", "{", "}", ", ", "\n", "  ",
     "!!python/object:os.system", "!!binary", "1e-3", ".inf", ".nan", "true", "'5'", "~", "#", "? ", "|", ">"]
)
yaml_docs = st.one_of(
    st.text(max_size=4000),
    st.lists(yaml_atoms, max_size=400).map("".join),
    st.builds(lambda d, x: "a: " + "[" * d + x + "]" * d, st.integers(0, 3000), st.sampled_from(["", "1", "*a"])),
    st.builds(lambda k, n: _laughs(k, n), st.integers(0, 50), st.integers(0, 30)),
)


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(yaml_docs)
def test_fuzzed_yaml_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "s.yaml"
    p.write_text(text)
    try:
        load(p)
    except ScenarioError as e:
        assert "\n" not in str(e) and str(p) in str(e)


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("peers: {count: -3}", "peers.count"),
        ("peers: {count: 1000000000000}", "peers.count"),
        ("rounds: 1e400", "rounds"),
        ("training: {lr: .nan}", "training.lr"),
        ("training: {lr: .inf}", "training.lr"),
        ("strategy: {name: krum, params: {m: -1}}", "strategy"),
        ("peers: {byzantine_fraction: 2}", "peers.byzantine_fraction"),
        ("seed: -1", "seed"),
        ("topology: [1, 2]", "topology"),
    ],
)
def test_specific_hostile_values(tmp_path, yaml_text, field):
    p = tmp_path / "s.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert field in str(e.value) and "\n" not in str(e.value)


def test_unwritable_or_full_output_dir_fails_before_run(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    sc = parse({"output": {"dir": str(blocker)}})
    with pytest.raises(OSError, match="cannot write to output directory"):
        Run(sc).create_dir()

    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 2**20, 2**20))
    sc = parse({"output": {"dir": str(tmp_path / "runs")}})
    with pytest.raises(OSError, match="MiB free"):
        Run(sc).create_dir()


def test_resolved_scenario_roundtrips(tmp_path):
    sc = parse({"strategy": {"name": "median"}, "peers": {"count": 12}})
    again = parse(yaml.safe_load(yaml.safe_dump(sc.model_dump(mode="json"))))
    assert again == sc


# ---------------------------------------------------------------- a fuzz that runs
def _floats(lo: float, hi: float):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


small_runs = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["decentralized", "federated"]),
        "rounds": st.integers(1, 3),
        "seed": st.integers(0, 2**20),
        "partition": st.fixed_dictionaries(
            {"kind": st.sampled_from(["iid", "dirichlet", "classes", "windows", "quantity"])},
            optional={
                "alpha": _floats(0.01, 10), "k": st.integers(1, 12), "window": st.integers(1, 12),
                "beta": _floats(0.01, 10), "min_size": st.integers(1, 4), "val_fraction": _floats(0, 0.95),
                "per_class": st.integers(1, 4), "byzantine_classes": st.sampled_from(["partition", "all"]),
            },
        ),
        "peers": st.fixed_dictionaries(
            {"count": st.integers(2, 10), "byzantine": st.integers(0, 3),
             "attack": st.fixed_dictionaries({"name": st.sampled_from(["none", *sorted(attacks.REGISTRY)])},
                                             optional={"omniscient": st.booleans(), "collude": st.booleans()})},
        ),
        "topology": st.fixed_dictionaries(
            {"kind": st.sampled_from(["complete", "ring", "k_regular", "erdos_renyi", "watts_strogatz",
                                      "push_gossip"])},
            optional={"degree": st.integers(1, 6), "p": _floats(0, 1), "fanout": st.integers(1, 5)},
        ),
        "strategy": st.fixed_dictionaries(
            {"name": st.sampled_from(sorted(strategies.REGISTRY))}, optional={"f": st.integers(0, 3)}
        ),
        "training": st.fixed_dictionaries(
            {},
            optional={
                "optimizer": st.sampled_from(["sgd", "adam"]), "lr": _floats(1e-3, 100), "momentum": _floats(0, 0.99),
                "weight_decay": _floats(0, 2), "batch_size": st.integers(1, 64), "local_steps": st.integers(1, 3),
                "bias": st.booleans(),
            },
        ),
        "evaluation": st.fixed_dictionaries(
            {}, optional={"every": st.integers(1, 3), "peers": st.one_of(st.just("all"), st.integers(1, 5)),
                          "per_peer": st.booleans()}
        ),
        "checkpoint": st.fixed_dictionaries({}, optional={"every": st.integers(0, 2)}),
        "engine": st.fixed_dictionaries({"backend": st.just("local"), "num_actors": st.integers(1, 3)}),
    }
)


def test_group_of_only_byzantine_peers_evaluates(small_scenario):
    """A group hosting no honest peer reports no metrics (found by the fuzz below: it called
    ``torch.cat([])``); the run's metrics are those of the honest peers of the other groups."""
    sc = parse(small_scenario(rounds=1, **{"peers.count": 4, "peers.byzantine": 1, "peers.attack.name": "sign_flip",
                                           "topology.kind": "complete", "engine.num_actors": 4}))
    run = Run(sc)
    run.create_dir()
    run.execute(log=lambda m: None)
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and 0 < json.loads(lines[0])["accuracy_mean"] <= 1


@pytest.mark.slow  # ~20 s alone, ~60 s on a busy machine: about a third of the examples pass validation and run
@settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(small_runs)
def test_fuzzed_small_scenarios_that_validate_run(tmp_path_factory, data):
    """What validation accepts runs: to the last round with valid JSON metrics, or stopped by a
    FedsimError (one line), never another exception."""
    root = tmp_path_factory.getbasetemp() / "fuzz-run"
    data |= {
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(root / "cache")},  # shared: features computed once
        "output": {"dir": str(root / "runs")},
        "name": f"r{uuid.uuid4().hex[:12]}",
    }
    try:
        sc = parse(data)
    except ScenarioError as e:
        assert "\n" not in str(e)
        return
    run = Run(sc)
    run.create_dir()
    try:
        run.execute(log=lambda m: None)
    except FedsimError as e:
        assert "\n" not in str(e)
        return
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == sc.rounds
    for line in lines:
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))
