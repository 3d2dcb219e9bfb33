"""What the scenario sets and its run never reads is refused (tests/test_kind_fields.py has the
kind-specific fields): a field written by hand counts even at its default, while a recorded
``scenario.yaml`` (every section complete) still reads back, resumes and re-runs; a graph in
federated mode; ``strategy.f`` where neither the rule nor the forger reads f, against the rules'
and forgers' own behaviour (a property over every registered class)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import attacks
import strategies
from fedsim.checks import rule_reads_f
from fedsim.checks_attacks import forger_reads_f, forger_reads_honest
from fedsim.rundirectory import RunDirectory, load_for_resume
from fedsim.scenario import ScenarioError, load, parse
from fedsim.schema import Scenario
from fedsim.validation import given

SMALL = {"peers": {"count": 10}, "rounds": 1, "engine": {"backend": "local", "num_actors": 1}}


def _refused(data: dict, match: str) -> str:
    with pytest.raises(ScenarioError) as e:
        parse(data)
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------- 1. defaults written by hand
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"topology": {"kind": "ring", "degree": 6}}, "topology.degree: used only by kinds k_regular, watts_strogatz"),
        ({"partition": {"kind": "iid", "alpha": 0.5}}, "partition.alpha: used only by kind dirichlet"),
        ({"peers": {"count": 10, "attack": {"collude": True}}}, "peers.attack.collude: used only by kind forger"),
        ({"mode": "federated", "topology": {"fanout": 5}}, "topology.fanout: used only by kind push_gossip"),
    ],
)
def test_a_field_written_by_hand_counts_at_its_default(data, error):
    _refused(SMALL | data, error)


def test_switching_the_quickstart_topology_to_a_ring_names_its_degree():
    """``fedsim run scenarios/quickstart.yaml --set topology.kind=ring``: quickstart writes
    ``degree: 6``, the default, which a ring does not read."""
    with pytest.raises(ScenarioError, match=r"topology\.degree: used only by .*\(this topology is ring\): remove it"):
        load("scenarios/quickstart.yaml", {"topology.kind": "ring"})
    assert load("scenarios/quickstart.yaml", {"topology": {"kind": "ring"}}).topology.kind == "ring"


def _recorded(tmp_path, data: dict):
    """A run folder as ``fedsim run`` writes it (scenario.yaml: every field, ``model_dump``)."""
    sc = parse(SMALL | data | {"output": {"dir": str(tmp_path / "runs")}})
    d = RunDirectory(tmp_path / "runs" / sc.name, sc)
    d.create()
    d.lock.release()
    return sc, d.path


@pytest.mark.parametrize(
    "data",
    [
        {"topology": {"kind": "ring"}, "partition": {"kind": "iid"}},
        {"mode": "federated", "strategy": {"name": "median"}},
        {"peers": {"count": 10, "byzantine": 2, "attack": {"name": "label_swap"}}},
        {"topology": {"kind": "complete"}, "strategy": {"name": "fedavg"}},
    ],
)
def test_a_recorded_scenario_resumes_and_reruns_as_it_is(tmp_path, data):
    """scenario.yaml holds every field, the ones its kinds ignore at their defaults: the resume
    reads it (``load_for_resume``), so does ``fedsim run DIR/scenario.yaml``."""
    sc, path = _recorded(tmp_path, data)
    text = yaml.safe_load((path / "scenario.yaml").read_text())
    assert text["topology"].keys() == {"kind", "degree", "p", "fanout"} and "f" in text["strategy"]
    assert load_for_resume(path).model_dump() == sc.model_dump()
    assert load_for_resume(path, {"engine.num_actors": 2}).engine.num_actors == 2
    assert load(path / "scenario.yaml").model_dump() == sc.model_dump()


OLD_RECORDED = Path(__file__).parent / "fixtures" / "recorded_scenario_5ef88f9.yaml"  # written before this check


def test_a_run_folder_written_before_the_check_still_reads_back(tmp_path):
    run = tmp_path / "runs" / "run"
    run.mkdir(parents=True)
    (run / "scenario.yaml").write_text(OLD_RECORDED.read_text())
    (run / "versions.json").write_text("{}")  # a run folder from before the marker file
    sc = load_for_resume(run)
    assert (sc.topology.kind, sc.topology.degree, sc.partition.kind, sc.strategy.f) == ("ring", 6, "iid", None)
    edited = yaml.safe_load(OLD_RECORDED.read_text())
    edited["topology"]["degree"] = 4  # a value a ring ignores is refused in a complete section too
    _refused(edited, "topology.degree: used only by")


def test_given_counts_a_key_at_any_value_but_in_a_complete_section_only_off_its_default():
    hand = Scenario.model_validate({"topology": {"kind": "ring", "degree": 6}}).topology
    full = Scenario.model_validate({"topology": {"kind": "ring", "degree": 6, "p": 0.2, "fanout": 5}}).topology
    assert given(hand, "degree") and not given(hand, "p")
    assert not given(full, "degree") and given(full, "kind")  # kind: ring is not the default k_regular
    off = Scenario.model_validate({"topology": {"kind": "ring", "degree": 4, "p": 0.2, "fanout": 5}}).topology
    assert given(off, "degree")


# --------------------------------------------------------------------------- 2. federated mode is a star
FED_ERROR = "topology.kind: federated mode uses a star (server ↔ clients); remove topology or set mode: decentralized"


@pytest.mark.parametrize("kind", ["ring", "k_regular", "complete", "push_gossip"])
def test_a_graph_in_federated_mode_is_one_line(kind):
    _refused(SMALL | {"mode": "federated", "topology": {"kind": kind}}, FED_ERROR)


def test_federated_mode_without_a_graph_is_a_star():
    for data in ({}, {"topology": {"kind": "star"}}, {"topology": {}}):
        assert parse(SMALL | {"mode": "federated"} | data).topology.kind == "star"
    with pytest.raises(ScenarioError, match="topology.kind: federated mode uses a star"):
        load("scenarios/quickstart.yaml", {"mode": "federated"})  # its k_regular graph would be dropped
    assert load("scenarios/quickstart.yaml", {"mode": "federated", "topology": {"kind": "star"}}).mode == "federated"


def test_the_flower_bridge_still_makes_a_decentralized_scenario_a_star():
    from fedsim.flower.common import bridge_scenario, scenario_yaml

    sc = bridge_scenario(load("scenarios/quickstart.yaml").model_dump(mode="json"))
    assert sc.topology.kind == "star"
    assert bridge_scenario(scenario_yaml(sc)).model_dump() == sc.model_dump()


# --------------------------------------------------------------------------- 3. strategy.f read by nobody
@pytest.mark.parametrize(
    ("strategy", "attack", "these"),
    [
        ({"name": "fedavg", "f": 2}, None, "fedavg"),
        ({"name": "fedavg", "f": 0}, None, "fedavg"),
        ({"name": "local", "f": "max"}, None, "local"),
        ({"name": "mozi", "f": 1, "params": {"rho": 0.5}}, None, "mozi with these params"),
        ({"name": "clipped_gossip", "f": 1, "params": {"tau": 1.0}}, None, "clipped_gossip with these params"),
        ({"name": "bucketing", "f": 1, "params": {"inner": "fedavg"}}, None, "bucketing with these params"),
        ({"name": "fedavg", "f": 1}, {"name": "alie", "params": {"z": 1.0}}, "fedavg"),  # z given: ALIE reads no f
        ({"name": "fedavg", "f": 1}, {"name": "sign_flip"}, "fedavg"),
    ],
)
def test_strategy_f_that_nothing_reads_is_one_line_naming_the_readers(strategy, attack, these):
    peers = {"count": 10} | ({"byzantine": 2, "attack": attack} if attack else {})
    msg = _refused(SMALL | {"peers": peers, "strategy": strategy}, f"(this rule is {these}, which does not read f)")
    readers = msg.split("used only by rules ", 1)[1]
    assert "krum" in readers and "median" in readers and "and attacks alie" in readers
    assert "fedavg" not in readers.split("(")[0] and "sign_flip" not in readers.split("(")[0]


@pytest.mark.parametrize(
    ("strategy", "attack"),
    [
        ({"name": "krum", "f": 1}, None),
        ({"name": "median", "f": 2}, None),  # its check's limit n + 1 >= 2f + 1
        ({"name": "mozi", "f": 1}, None),
        ({"name": "bucketing", "f": 1}, None),  # inner median
        ({"name": "fedavg", "f": 2}, {"name": "alie"}),  # ALIE's z_max is computed from f
        ({"name": "fedavg"}, None),
        ({"name": "fedavg", "params": {}, "f": None}, None),  # a complete section: f at its default
    ],
)
def test_strategy_f_read_by_the_rule_or_the_forger_is_accepted(strategy, attack):
    peers = {"count": 10} | ({"byzantine": 2, "attack": attack} if attack else {})
    parse(SMALL | {"peers": peers, "strategy": strategy, "topology": {"kind": "complete"}})


RULE_CASES = [
    (n, {}) for n in sorted(strategies.REGISTRY) if strategies.REGISTRY[n].__module__.startswith("strategies.")
] + [
    ("mozi", {"rho": 0.5}),
    ("clipped_gossip", {"tau": 1.0}),
    ("bucketing", {"inner": "fedavg"}),
    ("trimmed_mean", {"beta": 0.2}),
    ("arc", {"inner": "fedavg"}),
    ("nnm", {"inner": "fedavg"}),
    ("mozi", {"reference": "previous"}),
]


@pytest.mark.parametrize(("name", "params"), RULE_CASES)
def test_every_rule_declares_reads_f_as_it_behaves(name, params):
    rule = strategies.build(name, params)
    assert rule.reads_f == rule_reads_f(rule), (name, params, rule.reads_f)


FORGERS = [
    (n, {})
    for n in sorted(attacks.REGISTRY)
    if attacks.REGISTRY[n].kind == "forger" and attacks.REGISTRY[n].__module__.startswith("attacks.")
] + [("alie", {"z": 1.0})]


@pytest.mark.parametrize(("name", "params"), FORGERS)
def test_every_forger_declares_reads_f_as_it_behaves(name, params):
    forger = attacks.build(name, params)
    assert forger.reads_f == forger_reads_f(forger), (name, params, forger.reads_f)


# --------------------------------------------------------------------------- 4. omniscient read by nobody
@pytest.mark.parametrize(("name", "params"), FORGERS)
def test_every_forger_declares_reads_honest_as_it_behaves(name, params):
    forger = attacks.build(name, params)
    assert forger.reads_honest == forger_reads_honest(forger), (name, params, forger.reads_honest)


@pytest.mark.parametrize("name", ["sign_flip", "gaussian", "crash", "stale", "nan", "wrong_shape"])
@pytest.mark.parametrize("omniscient", [True, False])  # at its default too: written by hand
def test_omniscient_for_a_forger_that_never_reads_the_honest_vectors_is_one_line(name, omniscient):
    # (plugin forgers other tests registered in this process are listed too, after the built-ins)
    msg = _refused(
        SMALL | {"peers": {"count": 10, "byzantine": 2, "attack": {"name": name, "omniscient": omniscient}}},
        "peers.attack.omniscient: used only by attacks alie, dissensus, fang_krum, fang_trimmed_mean, "
        "ipm, min_max, min_sum",
    )
    assert msg.endswith(f"(this attack is {name}, which never reads the honest vectors): remove it"), msg
    assert name not in msg.split("(")[0]


@pytest.mark.parametrize("name", ["alie", "ipm", "min_max", "fang_trimmed_mean"])
def test_omniscient_for_a_forger_that_reads_the_honest_vectors_is_accepted(name):
    for omniscient in (True, False):
        parse(SMALL | {"peers": {"count": 10, "byzantine": 2, "attack": {"name": name, "omniscient": omniscient}}})


def test_a_recorded_sign_flip_run_reads_back_at_the_default_omniscient(tmp_path):
    sc, path = _recorded(tmp_path, {"peers": {"count": 10, "byzantine": 2, "attack": {"name": "sign_flip"}}})
    assert yaml.safe_load((path / "scenario.yaml").read_text())["peers"]["attack"]["omniscient"] is True
    assert load_for_resume(path).model_dump() == sc.model_dump()
    assert load("scenarios/flower_robust.yaml").peers.attack.name == "sign_flip"  # it wrote omniscient: false
