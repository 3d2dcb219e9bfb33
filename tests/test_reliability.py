"""Hostile input never crashes fedsim: fuzzed scenarios are accepted or rejected with one line that
names the field; output directories are never clobbered and unusable ones fail before the run."""

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=200))
def test_fuzzed_yaml_text(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "s.yaml"
    p.write_text(text)
    try:
        load(p)
    except ScenarioError as e:
        assert "\n" not in str(e)


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
