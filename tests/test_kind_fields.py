"""A field the section's kind does not read is refused (fedsim.schema_sections.KIND_FIELDS, checked
by fedsim.validation.ignored_fields): hand-picked cases per section, a property test over every
kind x every kind-specific field against what the run's own code does with the field, --set and
sweeps."""

from __future__ import annotations

import typing

import numpy as np
import pytest
from click.testing import CliRunner

from fedsim.cli import main
from fedsim.runfacts import build_topology, byzantine_mask, partition_for
from fedsim.scenario import ScenarioError, load, parse
from fedsim.schema import Scenario
from fedsim.schema_sections import KIND_FIELDS, PartitionCfg, TopologyCfg
from fedsim.sweep import sweep
from fedsim.sweep_plan import plan_sweep
from fedsim.validation import ignored_fields

SMALL = {"peers": {"count": 10}, "rounds": 1, "engine": {"backend": "local", "num_actors": 1}}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"partition": {"kind": "iid", "alpha": 0.1}},
         "partition.alpha: used only by kind dirichlet (this partition is iid)"),
        ({"partition": {"kind": "classes", "window": 2}}, "partition.window: used only by kind windows"),
        ({"partition": {"kind": "iid", "min_size": 3}}, "partition.min_size: used only by kinds dirichlet, quantity"),
        ({"partition": {"kind": "dirichlet", "per_class": 2}},
         "partition.per_class: used only by kinds classes, windows"),
        ({"topology": {"kind": "ring", "degree": 8}}, "topology.degree: used only by kinds k_regular, watts_strogatz "
         "(this topology is ring)"),
        ({"topology": {"kind": "k_regular", "p": 0.5}}, "topology.p: used only by kinds erdos_renyi, watts_strogatz"),
        ({"topology": {"kind": "complete", "fanout": 3}}, "topology.fanout: used only by kind push_gossip"),
        ({"mode": "federated", "topology": {"degree": 4}}, "topology.degree: used only by kinds k_regular, "
         "watts_strogatz (this topology is star)"),
        ({"peers": {"byzantine": 2, "attack": {"name": "label_swap", "collude": False}}},
         "peers.attack.collude: used only by kind forger (this attack is poisoner)"),
        ({"peers": {"attack": {"omniscient": False}}}, "peers.attack.omniscient: used only by kind forger "
         "(this attack is none)"),
        ({"model": {"k": 2}}, "model.k: used only by trainable last_k (this model is head)"),
        ({"dataset": {"data_dir": "/nonexistent"}}, "dataset.data_dir: used only by datasets read from local files "
         "(this dataset is embedded)"),
        ({"engine": {"backend": "local", "address": "auto"}}, "engine.address: used only by backend ray "
         "(this engine is local): drop --address (engine.address), or run on Ray: --set engine.backend=ray"),
    ],
)
def test_a_field_the_kind_ignores_is_one_line_naming_it(data, error):
    with pytest.raises(ScenarioError) as e:
        parse(SMALL | data)
    assert error in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "data",
    [
        {"partition": {"kind": "dirichlet", "alpha": 0.1, "min_size": 3}},
        {"partition": {"kind": "quantity", "beta": 2.0, "min_size": 3}},
        {"partition": {"kind": "windows", "window": 2, "per_class": 2}},
        {"partition": {"kind": "classes", "k": 3, "byzantine_classes": "partition"}},
        {"partition": {"kind": "iid", "val_fraction": 0.2}},  # read by every kind
        {"partition": {"kind": "iid"}, "topology": {"kind": "ring"}},  # no field the kinds ignore given
        {"topology": {"kind": "watts_strogatz", "degree": 4, "p": 0.3}},
        {"topology": {"kind": "push_gossip", "fanout": 3}},
        {"peers": {"byzantine": 2, "attack": {"name": "ipm", "collude": False, "omniscient": False}}},
        {"engine": {"backend": "ray", "num_actors": 1, "address": "auto"}},
        {"engine": {"backend": "local", "num_actors": 1, "address": None}},  # null: no cluster (old run folders)
    ],
)
def test_a_field_the_kind_reads_is_accepted(data):
    parse(SMALL | data)


def test_a_recorded_scenario_reads_back():
    """scenario.yaml holds every field (the ignored ones at their defaults): a resume reads it."""
    sc = parse(SMALL | {"partition": {"kind": "iid"}, "topology": {"kind": "ring"}, "mode": "decentralized"})
    assert parse(sc.model_dump(mode="json")).partition.kind == "iid"
    fed = parse(SMALL | {"mode": "federated"})
    assert parse(fed.model_dump(mode="json")).topology.kind == "star"


def test_the_table_names_real_fields_and_kinds():
    for path, spec in KIND_FIELDS.items():
        section: typing.Any = Scenario
        for part in path.split("."):
            section = typing.get_type_hints(section)[part]
        assert set(spec.reads) <= set(section.model_fields), path
        kinds = typing.get_args(section.model_fields[spec.kind].annotation) if spec.kind in section.model_fields \
            else ("forger", "poisoner", "none", "embedded", "local files")  # AttackCfg.kind, DatasetCfg.source
        assert {k for ks in spec.reads.values() for k in ks} <= set(kinds), path


# --------------------------------------------------------------------------- property: read or refused
PARTITION_ALT = {"alpha": 5.0, "k": 3, "window": 4, "beta": 5.0, "min_size": 45, "val_fraction": 0.3,
                 "per_class": 2, "byzantine_classes": "all"}
TOPOLOGY_ALT = {"degree": 4, "p": 0.5, "fanout": 3}
Y = np.repeat(np.arange(10), 60)


def _partition(data: dict) -> tuple | None:
    sc = Scenario.model_validate(data)
    try:
        part = partition_for(sc, Y, byzantine_mask(sc))
    except ValueError:  # the run cannot use it at all
        return None
    return tuple(tuple(a.tolist()) for a in (*part.train, *part.val))


def _topology(data: dict) -> tuple:
    topo = build_topology(Scenario.model_validate(data))
    if topo.kind == "star":  # federated: the server hears every client, no graph is built
        return ()
    return tuple(tuple(a.tolist()) for r in (0, 1) for a in topo.in_neighbors(r))


def _refused(data: dict, path: str) -> bool:
    return any(e.startswith(path + ":") for e in ignored_fields(Scenario.model_validate(data)))


@pytest.mark.parametrize("kind", typing.get_args(PartitionCfg.model_fields["kind"].annotation))
@pytest.mark.parametrize("field", sorted(PARTITION_ALT))
def test_every_partition_field_is_read_by_the_kind_or_refused(kind, field):
    assert set(PARTITION_ALT) == set(PartitionCfg.model_fields) - {"kind"}  # every field has a case
    base = {"peers": {"count": 10, "byzantine": 2, "attack": {"name": "sign_flip"}}, "partition": {"kind": kind}}
    alt = base | {"partition": {"kind": kind, field: PARTITION_ALT[field]}}
    read = _partition(alt) not in (None, _partition(base))  # the run's partition changes with the field
    assert _refused(alt, f"partition.{field}") != read, (kind, field, read)


@pytest.mark.parametrize("kind", typing.get_args(TopologyCfg.model_fields["kind"].annotation))
@pytest.mark.parametrize("field", sorted(TOPOLOGY_ALT))
def test_every_topology_field_is_read_by_the_kind_or_refused(kind, field):
    assert set(TOPOLOGY_ALT) == set(TopologyCfg.model_fields) - {"kind"}
    base = {"peers": {"count": 12}, "topology": {"kind": kind}, "mode": "federated" if kind == "star" else
            "decentralized"}
    alt = base | {"topology": {"kind": kind, field: TOPOLOGY_ALT[field]}}
    read = _topology(alt) != _topology(base)  # the run's graph changes with the field
    assert _refused(alt, f"topology.{field}") != read, (kind, field, read)


# --------------------------------------------------------------------------- --set and sweeps
def _iid_file(tmp_path):
    p = tmp_path / "iid.yaml"
    p.write_text("name: iid\npeers: {count: 10}\nrounds: 1\npartition: {kind: iid}\n"
                 f"output: {{dir: {tmp_path / 'runs'}}}\nengine: {{backend: local, num_actors: 1}}\n")
    return p


def test_a_set_override_goes_through_the_check(tmp_path):
    with pytest.raises(ScenarioError, match=r"partition\.alpha: used only by kind dirichlet"):
        load(_iid_file(tmp_path), {"partition.alpha": 0.1})


def test_address_with_the_local_backend_is_refused_before_any_folder(tmp_path):
    """`fedsim run --address` with `engine.backend: local` ran in-process and ignored the address."""
    p = _iid_file(tmp_path)
    res = CliRunner().invoke(main, ["run", str(p), "--address", "auto", "-q"])
    assert res.exit_code == 1 and "engine.address: used only by backend ray (this engine is local)" in res.output
    assert not (tmp_path / "runs").exists()
    assert load(p, {"engine.backend": "ray", "engine.address": "auto"}).engine.address == "auto"  # control


def test_a_local_sweep_refuses_address_as_run_does_before_any_folder(tmp_path):
    """`fedsim sweep --local --address ADDR` ran every run in this process and ignored the address,
    while `fedsim run --address` with the local backend is refused (the same check refuses both)."""
    p = _iid_file(tmp_path)
    res = CliRunner().invoke(main, ["sweep", str(p), "-g", "seed=0,1", "--local", "--address", "auto", "-q"])
    assert res.exit_code == 1, res.output
    assert "engine.address: used only by backend ray (this engine is local): drop --address, or --local" in res.output
    assert not (tmp_path / "runs").exists()


def _with_engine(tmp_path, engine: str, name: str = "s") -> typing.Any:
    p = tmp_path / f"{name}.yaml"
    p.write_text(_iid_file(tmp_path).read_text().replace("backend: local", engine))
    return p


def test_a_sweep_runs_on_the_cluster_its_scenario_names(tmp_path):
    """A sweep runs each run in-process (engine.backend: local) in its Ray tasks. A scenario's own
    engine.address was refused (it was the only way `fedsim run` and `fedsim sweep` of one file
    differed); now, with the Ray backend, it is the sweep's cluster (plan.address), and the runs'
    engines name none. With the local backend it is refused as `fedsim run` refuses it; a null
    address (an old recorded scenario) means none."""
    plan = plan_sweep(_with_engine(tmp_path, "backend: ray, address: auto"), {"seed": [0, 1]})
    assert plan.address == "auto"
    assert [r.data["engine"] for r in plan.runs] == [{"backend": "local", "num_actors": 1}] * 2
    with pytest.raises(ScenarioError, match=r"\[seed=0\]: engine\.address: used only by backend ray \(this engine is "
                       r"local\): drop --address \(engine\.address\), or run on Ray: --set engine\.backend=ray"):
        plan_sweep(_with_engine(tmp_path, "backend: local, address: auto"), {"seed": [0, 1]})
    for engine in ("backend: local, address: null", "backend: ray"):  # none: the sweep starts its own Ray
        plan = plan_sweep(_with_engine(tmp_path, engine), {"seed": [0, 1]})
        assert plan.address is None
        assert [r.data["engine"] for r in plan.runs] == [{"backend": "local", "num_actors": 1}] * 2


def test_a_sweep_whose_runs_name_different_clusters_is_refused(tmp_path):
    p = _with_engine(tmp_path, "backend: ray, address: 10.0.0.1:6379")
    with pytest.raises(ScenarioError, match=r"the sweep's runs name different Ray clusters in engine\.address: "
                       r"10\.0\.0\.1:6379 \(engine\.address=10\.0\.0\.1-6379\), none \(engine\.address=null\); "
                       r"a sweep runs on one"):
        plan_sweep(p, {"engine.address": ["10.0.0.1:6379", None]})
    assert plan_sweep(p, {"engine.address": ["10.0.0.1:6379"], "seed": [0, 1]}).address == "10.0.0.1:6379"


def test_a_sweep_whose_scenario_names_an_invalid_address_gets_fedsim_runs_error(tmp_path):
    """Not "no cluster" (the runs would silently go to a Ray of the sweep's own): the one line `fedsim
    run` gives for the same engine section."""
    p = _with_engine(tmp_path, "backend: ray, address: 5")
    with pytest.raises(ScenarioError, match=r"engine\.address: .*valid string"):
        plan_sweep(p, {"seed": [0, 1]})


def test_the_sweeps_cluster_is_address_or_the_scenarios_and_never_two(tmp_path):
    from fedsim.sweep_execute import sweep_cluster

    named = plan_sweep(_with_engine(tmp_path, "backend: ray, address: 10.0.0.1:6379"), {"seed": [0, 1]})
    plain = plan_sweep(_iid_file(tmp_path), {"seed": [0, 1]})
    assert sweep_cluster(named, None, False) == "10.0.0.1:6379"
    assert sweep_cluster(named, "10.0.0.1:6379", False) == "10.0.0.1:6379"
    assert sweep_cluster(plain, "auto", False) == "auto" and sweep_cluster(plain, None, False) is None
    assert sweep_cluster(plain, None, True) is None
    with pytest.raises(ScenarioError, match=r"^--address auto and .*'s engine\.address 10\.0\.0\.1:6379 name different "
                       r"Ray clusters; drop --address to run on 10\.0\.0\.1:6379"):
        sweep_cluster(named, "auto", False)
    with pytest.raises(ScenarioError, match=r"engine\.address 10\.0\.0\.1:6379: --local runs every run in this "
                       r"process, where no run reads it; drop --local"):
        sweep_cluster(named, None, True)


def test_a_sweep_goes_to_its_scenarios_cluster_and_says_when_none_is_there(tmp_path):
    """The cluster the scenario names is the one the sweep checks and connects to: no live cluster
    there is `fedsim run`'s one line (fedsim.backend.cluster_address), before any folder; it was
    the refusal of the address."""
    import socket

    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = _with_engine(tmp_path, f"backend: ray, address: '127.0.0.1:{port}'")
    res = CliRunner().invoke(main, ["sweep", str(p), "-g", "seed=0,1", "-q"])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: no live Ray cluster at ") and f"127.0.0.1:{port}" in res.output, res.output
    assert ": connection refused; " in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "runs").exists()


def test_a_sweep_over_an_ignored_field_is_refused_before_any_run(tmp_path):
    p = _iid_file(tmp_path)
    with pytest.raises(ScenarioError, match=r"partition\.alpha: used only by kind dirichlet"):
        plan_sweep(p, {"partition.alpha": [0.1, 1.0]})
    for extra in ([], ["--skip-invalid"]):
        res = CliRunner().invoke(sweep, [str(p), "-g", "partition.alpha=0.1,0.2", "--local", "-q", *extra])
        assert res.exit_code != 0 and ("partition.alpha" in res.output or "no valid run" in res.output), res.output
    assert not (tmp_path / "runs").exists()  # nothing written


def test_the_flower_bridge_makes_a_decentralized_scenario_a_star_without_its_graph_fields():
    """Flower is a star: the bridge's own switch to federated mode leaves no topology.degree behind."""
    from fedsim.flower.common import bridge_scenario, scenario_yaml

    sc = bridge_scenario(load("scenarios/attack_matrix.yaml").model_dump(mode="json"))  # k_regular, degree 8
    assert sc.mode == "federated" and sc.topology.kind == "star"
    assert bridge_scenario(scenario_yaml(sc)).topology == sc.topology  # the run config's text reads back



def test_the_error_says_how_to_switch_kind_with_set():
    """The one line names the fix: drop the field or give the whole section with ``--set``; a derived
    kind (the attack's forger/poisoner) gets no ``--set`` hint: it is not a field one sets."""
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "partition": {"kind": "iid", "alpha": 0.1}})
    assert "remove it, or with --set give the whole section, e.g. --set 'partition={kind: iid}'" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "peers": {"count": 10, "byzantine": 2, "attack": {"name": "label_swap", "collude": False}}})
    assert "peers.attack.collude: used only by" in str(e.value) and "--set" not in str(e.value)
