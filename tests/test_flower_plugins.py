"""Plugins on the Flower bridge: packed by whoever exports the app or sets up a device, imported by
the apps only where the scenario lists them and the copy's sha256 is the one the app recorded
(fedsim.flower.plugpack). Refusals are one line, before any import; a plugin scenario runs through
the in-process bridge with the same metrics as ``fedsim run --plugin``."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from fedsim import plugins
from fedsim.flower import bundle, common, plugpack
from fedsim.flower.common import BridgeError

RULE = '''
from dataclasses import dataclass
from pathlib import Path

import strategies

Path({marker!r}).write_text("imported")


@strategies.register({name!r})
@dataclass
class HalfMean(strategies.Strategy):
    """Half-way from the plain mean of the received vectors to the first one (a test's plugin)."""

    exchanges = "output_layer"

    def __call__(self, own, received, ctx):
        return 0.5 * received.mean(0) + 0.5 * received[0]
'''

ATTACK = '''
from dataclasses import dataclass
from pathlib import Path

import attacks

Path({marker!r}).write_text("imported")


@attacks.register({name!r})
@dataclass
class Mirror(attacks.UpdateForger):
    """Send its own head reflected and scaled (a test's plugin)."""

    scale: float = 3.0

    def forge(self, honest, own, ctx):
        return -self.scale * own
'''


@pytest.fixture()
def fresh(tmp_path, monkeypatch):
    """A fresh process's plugin state, and two plugin files (a rule, an attack) that leave a marker
    when imported; yields (rule file, attack file, rule name, attack name, markers folder)."""
    import attacks
    import strategies

    monkeypatch.setattr(plugins, "_GRANTED", set())
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.setattr(plugins, "_COPY_SHA", {})
    monkeypatch.setattr(plugpack, "PACKED_DIR", tmp_path / "no-bundle")
    tag = f"fp{abs(hash(str(tmp_path))) % 10**8}"
    marks = tmp_path / "marks"
    marks.mkdir()
    src = tmp_path / "server"
    src.mkdir()
    rule, attack = src / "my_rule.py", src / "my_attack.py"
    rule.write_text(textwrap.dedent(RULE.format(marker=str(marks / "rule"), name=f"{tag}_half")))
    attack.write_text(textwrap.dedent(ATTACK.format(marker=str(marks / "attack"), name=f"{tag}_mirror")))
    yield rule, attack, f"{tag}_half", f"{tag}_mirror", marks
    strategies.REGISTRY.pop(f"{tag}_half", None)
    attacks.REGISTRY.pop(f"{tag}_mirror", None)


def _device_copy(src: Path, folder: Path) -> Path:
    """The device's own copy of a plugin file (same bytes, elsewhere)."""
    folder.mkdir(exist_ok=True)
    dst = folder / src.name
    dst.write_bytes(src.read_bytes())
    return dst


def _scenario(small_scenario, rule, attack, rule_name, attack_name):
    return small_scenario(
        **{
            "mode": "federated",
            "rounds": 3,
            "topology.kind": "star",
            "peers.count": 5,
            "peers.byzantine": 1,
            "strategy.name": rule_name,
            "peers.attack.name": attack_name,
            "plugins": [str(rule), str(attack)],
            "training.lr": 0.2,
        }
        | ({"peers.attack.params": {"scale": 0.5}} if attack_name.endswith("_mirror") else {})
    )


def _run_config(d, rec, **more):
    return {"scenario": yaml.safe_dump(d), plugpack.KEY: rec} | more


def test_record_is_the_sha256_of_each_file_and_refuses_module_names(fresh):
    rule, attack, *_ = fresh
    rec = json.loads(plugpack.record([str(rule), str(attack)]))
    assert rec == {str(rule): plugpack.file_sha256(rule), str(attack): plugpack.file_sha256(attack)}
    assert plugpack.read_record({plugpack.KEY: json.dumps(rec)}) == rec
    assert plugpack.record([]) == ""
    with pytest.raises(BridgeError, match=r"packs plugins as \.py files only"):
        plugpack.record(["my_pkg.rules"])
    with pytest.raises(BridgeError, match="expected JSON"):
        plugpack.read_record({plugpack.KEY: '{"a.py": "short"}'})


def test_server_imports_the_listed_file_only_while_its_hash_matches(fresh, small_scenario):
    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, aname)
    rec = plugpack.record([str(rule), str(attack)])
    rule.write_text(rule.read_text() + "\n# changed after the export\n")
    with pytest.raises(BridgeError, match=r"^server: plugins: .*my_rule\.py: its content changed since the app"):
        common.scenario_from_run_config(_run_config(d, rec))
    assert not any(marks.iterdir())  # refused before any import, the attack's included
    assert not plugins._GRANTED


def test_a_listed_plugin_without_a_record_is_refused_everywhere(fresh, small_scenario):
    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, aname)
    rec = plugpack.record([str(attack)])  # the rule was not packed
    copies = {plugpack.KEY: f"{rule}:{attack}"}
    for nc in (None, {"partition-id": 0} | copies):
        with pytest.raises(BridgeError, match=r"my_rule\.py: not granted: the Flower apps import a plugin only"):
            common.scenario_from_run_config(_run_config(d, rec), nc)
    with pytest.raises(BridgeError, match="not granted"):
        common.bridge_scenario(d)  # export / demo without --plugin
    assert not any(marks.iterdir())


def test_device_imports_its_granted_copy_whose_hash_matches(fresh, small_scenario, tmp_path):
    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, aname)
    rc = _run_config(d, plugpack.record([str(rule), str(attack)]))
    dev = tmp_path / "device"
    r2, a2 = _device_copy(rule, dev), _device_copy(attack, dev / "b")
    # a copy with other content: refused before any import, naming what the device has
    a2.write_text(a2.read_text() + "\n# tampered\n")
    with pytest.raises(BridgeError, match=r"^node \(partition-id 2\): plugins: my_attack\.py: no granted copy with"):
        common.scenario_from_run_config(rc, {"partition-id": 2, plugpack.KEY: f"{r2}:{a2}"})
    assert not any(marks.iterdir())
    # no copy at all
    with pytest.raises(BridgeError, match=r"its copies: none\)"):
        common.scenario_from_run_config(rc, {"partition-id": 2})
    a2.write_bytes(attack.read_bytes())
    sc = common.scenario_from_run_config(rc, {"partition-id": 2, plugpack.KEY: f"{r2}:{a2}"})
    assert sc.strategy.name == rname and sc.peers.attack.name == aname
    assert plugins._LOADED[str(rule)].__file__ == str(r2)  # imported from the device's copy, as the entry
    assert plugins._LOADED[str(attack)].__file__ == str(a2)


def test_a_packed_plugin_the_scenario_does_not_list_is_not_imported(fresh, small_scenario, tmp_path, monkeypatch):
    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, "sign_flip") | {"plugins": [str(rule)]}
    rc = _run_config(d, plugpack.record([str(rule), str(attack)]))  # both recorded, only the rule listed
    src = tmp_path / "src"
    packed = bundle.pack_plugins([rule, attack], src)  # both in the device's bundle
    assert packed == {"my_rule.py": plugpack.file_sha256(rule), "my_attack.py": plugpack.file_sha256(attack)}
    monkeypatch.setattr(plugpack, "PACKED_DIR", src / "fedsim" / "flower" / "packed")
    assert [p.name for p in plugpack.device_copies({})] == ["my_attack.py", "my_rule.py"]
    for nc in (None, {"partition-id": 0}):
        common.scenario_from_run_config(rc, nc)
    assert (marks / "rule").exists() and not (marks / "attack").exists()
    assert str(attack) not in plugins._LOADED and str(attack) not in plugins._GRANTED


def test_bundle_refuses_two_plugins_of_one_name(fresh, tmp_path):
    rule, *_ = fresh
    other = _device_copy(rule, tmp_path / "other")
    with pytest.raises(bundle.BundleError, match="two plugins named my_rule.py"):
        bundle.pack_plugins([rule, other], tmp_path / "src")
    with pytest.raises(bundle.BundleError, match="no such file"):
        bundle.pack_plugins([tmp_path / "missing.py"], tmp_path / "src2")
    init = tmp_path / "pkg" / "__init__.py"
    init.parent.mkdir()
    init.write_text("V = 1\n")
    with pytest.raises(bundle.BundleError, match="cannot be named __init__.py"):
        bundle.pack_plugins([init], tmp_path / "src3")
    assert not (tmp_path / "src3").exists() and not (tmp_path / "src").exists()  # refused before writing


def test_export_records_the_granted_plugins_and_refuses_the_others(fresh, small_scenario, tmp_path):
    pytest.importorskip("flwr")
    tomllib = pytest.importorskip("tomllib")
    from click.testing import CliRunner

    from fedsim.cli import main

    rule, attack, rname, aname, marks = fresh
    scen = tmp_path / "s.yaml"
    scen.write_text(yaml.safe_dump(_scenario(small_scenario, rule, attack, rname, aname)))
    r = CliRunner().invoke(main, ["flower", "export", str(scen), str(tmp_path / "app"), "--plugin", str(rule)])
    assert r.exit_code == 1 and "my_attack.py: not granted" in r.output and len(r.output.strip().splitlines()) == 1
    assert not any(marks.iterdir()) and not (tmp_path / "app").exists()
    r = CliRunner().invoke(
        main, ["flower", "export", str(scen), str(tmp_path / "app"), "--plugin", str(rule), "--plugin", str(attack)]
    )
    assert r.exit_code == 0, r.output
    cfg = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert plugpack.read_record(cfg) == json.loads(plugpack.record([str(rule), str(attack)]))


def test_in_process_bridge_runs_a_plugin_rule_and_attack_as_fedsim_run_does(fresh, small_scenario, tmp_path):
    """The ServerApp imports the recorded files, each node checks its own copies' hashes (one process:
    the module is the server's), and the run's metrics equal fedsim's federated mode with --plugin on
    the same scenario."""
    pytest.importorskip("flwr")
    import fedsim
    from fedsim.flower.inprocess import run_in_process

    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, aname)
    rc = _run_config(d, plugpack.record([str(rule), str(attack)]), **{"output-dir": str(tmp_path / "bridge")})
    dev = tmp_path / "device"
    copies = f"{_device_copy(rule, dev)}:{_device_copy(attack, dev / 'b')}"
    nodes = [{"partition-id": i, "num-partitions": 5, plugpack.KEY: copies} for i in range(5)]
    summary = run_in_process(rc, nodes)
    br = [json.loads(x) for x in (tmp_path / "bridge" / "metrics.jsonl").read_text().splitlines()]
    fedsim.run(d, out=tmp_path / "sim", plugins=[str(rule), str(attack)], overwrite=True)
    sim = [json.loads(x) for x in (tmp_path / "sim" / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in br] == [0, 1, 2]
    for a, b in zip(sim, br, strict=True):
        assert b["accuracy_mean"] == a["accuracy_mean"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-6)
        assert b["rejected"] == [] and b["received"] == 5
    assert summary["final_accuracy_mean"] == sim[-1]["accuracy_mean"]
    assert br[-1]["accuracy_mean"] > br[0]["accuracy_mean"] + 0.2  # it learns: no trivially equal collapse


def test_in_process_a_node_without_a_matching_copy_refuses_and_the_round_goes_on(fresh, small_scenario, tmp_path):
    """The ClientApp checks its own copies (not the server's files): a node whose copy of the attack
    was changed answers with the refusal, the server lists it under its partition and aggregates the
    others."""
    pytest.importorskip("flwr")
    from fedsim.flower.inprocess import run_in_process

    rule, attack, rname, aname, marks = fresh
    d = _scenario(small_scenario, rule, attack, rname, aname)
    rc = _run_config(d, plugpack.record([str(rule), str(attack)]), **{"output-dir": str(tmp_path / "bridge")})
    good = f"{_device_copy(rule, tmp_path / 'dev')}:{_device_copy(attack, tmp_path / 'dev' / 'b')}"
    bad = _device_copy(attack, tmp_path / "bad")
    bad.write_text(bad.read_text() + "\n# tampered\n")
    nodes = [{"partition-id": i, "num-partitions": 5, plugpack.KEY: good} for i in range(4)]
    nodes.append({"partition-id": 4, "num-partitions": 5, plugpack.KEY: f"{rule}:{bad}"})
    run_in_process(rc | {"min-replies": 1}, nodes)
    br = [json.loads(x) for x in (tmp_path / "bridge" / "metrics.jsonl").read_text().splitlines()]
    assert [x["received"] for x in br] == [4, 4, 4]
    assert all("no granted copy with sha256" in json.dumps(x["rejected"]) for x in br)


@pytest.mark.slow  # builds the 32 MB wheel
def test_bundle_packs_the_plugins_into_the_wheel_and_lists_their_hashes(fresh, tmp_path):
    import hashlib
    import zipfile

    rule, attack, *_ = fresh
    files = bundle.build_bundle(tmp_path / "b", plugins=[str(rule), str(attack)])
    wheel = zipfile.ZipFile(files["wheel"])
    for f in (rule, attack):
        packed = wheel.read(f"fedsim/flower/packed/{f.name}")
        assert hashlib.sha256(packed).hexdigest() == plugpack.file_sha256(f)
        assert f"{f.name}  sha256 {plugpack.file_sha256(f)}" in files["install"].read_text()
    assert len(files["sha256sums"].read_text().splitlines()) == 2  # the wheel and constraints.txt: sha256sum -c
    assert not (bundle.source_root() / "fedsim" / "flower" / "packed").exists()  # the checkout is left as it was


# --- load_copy: the bytes hashed are the bytes run; a failed import grants nothing; one version a process


@pytest.fixture()
def bare(monkeypatch):
    from fedsim.probe_registry import REGISTRY

    monkeypatch.setattr(plugins, "_GRANTED", set())
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.setattr(plugins, "_COPY_SHA", {})
    yield
    REGISTRY.pop("copy_probe", None)  # what the copies below register (a plugin registers something)


COPY = ("from fedsim.probe_registry import Probe, register_probe\n\n\n"
        "@register_probe('copy_probe')\nclass CopyProbe(Probe):\n    pass\n\n\n")


def test_the_hash_checked_bytes_are_the_ones_run_not_a_planted_bytecode_cache(tmp_path, bare):
    """A ``__pycache__`` .pyc of other code with the checked file's size and mtime would be run by the
    import system instead of the file: load_copy runs the bytes it hashed."""
    import os
    import py_compile

    copy = tmp_path / "rules.py"
    copy.write_text(COPY + "V = 'benign'\n")
    sha, st = plugpack.file_sha256(copy), copy.stat()
    copy.write_text(COPY + "V = 'EVIL!!'\n")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    py_compile.compile(str(copy))  # the cache of the other text, valid for the file's size and mtime
    copy.write_text(COPY + "V = 'benign'\n")
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    plugpack.admit(["/srv/rules.py"], {"/srv/rules.py": sha}, [copy], "node")
    assert plugins._LOADED["/srv/rules.py"].V == "benign"


def test_load_copy_refuses_bytes_with_another_hash(tmp_path, bare):
    copy = tmp_path / "rules.py"
    copy.write_text("V = 1\n")
    with pytest.raises(plugins.PluginError, match=r"its sha256 is not the granted one"):
        plugins.load_copy("/srv/rules.py", copy, "0" * 64)
    assert "/srv/rules.py" not in plugins._LOADED and "/srv/rules.py" not in plugins._GRANTED


def test_a_failed_import_grants_nothing_and_a_later_unrecorded_listing_is_refused(tmp_path, bare):
    """A copy that fails to import leaves its entry ungranted: a later run in the same warm process
    that lists the entry with no record is refused, never imports the file at the listed path."""
    bad = tmp_path / "bad_copy.py"
    bad.write_text("import no_such_module_anywhere\n")
    victim = tmp_path / "victim.py"
    victim.write_text(f"open({str(tmp_path / 'IMPORTED')!r}, 'w').write('x')\n")
    with pytest.raises(BridgeError, match="ModuleNotFoundError"):
        plugpack.admit([str(victim)], {str(victim): plugpack.file_sha256(bad)}, [bad], "node")
    assert not plugins.granted_by_user(str(victim)) and str(victim) not in plugins._GRANTED
    with pytest.raises(BridgeError, match="not granted"):
        plugpack.admit([str(victim)], {}, [bad], "node")
    assert not (tmp_path / "IMPORTED").exists()


def test_a_warm_process_refuses_another_version_of_an_imported_plugin(tmp_path, bare):
    copy = tmp_path / "rules.py"
    copy.write_text(COPY + "V = 'X'\n")
    plugpack.admit(["/srv/rules.py"], {"/srv/rules.py": plugpack.file_sha256(copy)}, [copy], "node")
    assert plugins._LOADED["/srv/rules.py"].V == "X"
    plugpack.admit(["/srv/rules.py"], {"/srv/rules.py": plugpack.file_sha256(copy)}, [copy], "node")  # same: fine
    copy.write_text(COPY + "V = 'Y'\n")
    with pytest.raises(BridgeError, match="already imported another version"):
        plugpack.admit(["/srv/rules.py"], {"/srv/rules.py": plugpack.file_sha256(copy)}, [copy], "node")
    assert plugins._LOADED["/srv/rules.py"].V == "X"
