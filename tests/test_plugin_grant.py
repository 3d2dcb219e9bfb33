"""No file fedsim reads runs code by itself: a scenario's ``plugins:`` is imported only when the user
named the plugin too (``--plugin`` on run, validate, sweep and ``--resume``; ``plugins=`` in
Python). Refusals are one line, before anything is imported or written (fedsim.plugins.grant)."""

import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fedsim
from fedsim import plugins
from fedsim.api import resolve
from fedsim.callbacks import Stop
from fedsim.cli import main
from fedsim.scenario import ScenarioError

RULE = '''
from dataclasses import dataclass
from pathlib import Path

import strategies

Path({marker!r}).write_text("imported")  # what a hostile file would do: any code at all


@strategies.register({name!r})
@dataclass
class Mean(strategies.Strategy):
    """Plain mean (a test's plugin)."""

    exchanges = "output_layer"

    def __call__(self, own, received, ctx):
        return (own + received.sum(0)) / (received.shape[0] + 1)
'''


@pytest.fixture()
def user(tmp_path, small_scenario, monkeypatch):
    """A fresh process's state (nothing granted), a plugin file that leaves a marker when imported,
    and a scenario file in tmp_path that lists it; returns (plugin path, scenario path, marker)."""
    monkeypatch.setattr(plugins, "_GRANTED", set())
    monkeypatch.chdir(tmp_path)
    name = f"grant_mean_{abs(hash(str(tmp_path))) % 10**8}"
    marker = tmp_path / "IMPORTED"
    plugin = tmp_path / "mine.py"
    plugin.write_text(textwrap.dedent(RULE.format(marker=str(marker), name=name)))
    sc = small_scenario(plugins=["mine.py"], rounds=3, **{"strategy.name": name, "checkpoint.every": 1})
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(yaml.safe_dump(sc))
    yield plugin, scenario, marker
    import strategies

    strategies.REGISTRY.pop(name, None)


def _tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(result, plugin: Path) -> None:
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"plugins: {plugin}: not imported" in lines[0] and "add --plugin" in lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["run", "mine.yaml", "--out", "out/r", "-q"],
        ["validate", "mine.yaml"],
        ["sweep", "mine.yaml", "-g", "seed=1,2", "--local", "--out", "out/s", "-q"],
    ],
)
def test_a_scenario_naming_a_plugin_runs_no_code_without_plugin(user, tmp_path, command):
    plugin, _, marker = user
    before = _tree(tmp_path)
    _refused(CliRunner().invoke(main, command), plugin)
    assert not marker.exists()  # the file never ran
    assert _tree(tmp_path) == before  # nothing written


def test_a_relative_entry_missing_from_the_current_directory_says_so(user, tmp_path, monkeypatch):
    """From another folder, the scenario's relative `plugins: [mine.py]` is read from the current
    directory, where no such file is: the line says so, not "add --plugin mine.py" (which, named,
    gives "no such file"); nothing is imported or written."""
    plugin, scenario, marker = user
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = CliRunner().invoke(main, ["validate", str(scenario), "--plugin", str(plugin)])
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"{scenario}: plugins: {elsewhere / 'mine.py'}: no such file (listed as 'mine.py'; a relative entry is read "
        f"from the current directory, {elsewhere}): correct the scenario's plugins:, or run from the folder it is "
        "relative to"]
    assert not marker.exists() and list(elsewhere.iterdir()) == []


def test_plugin_option_runs_and_records_it(user, tmp_path):
    plugin, scenario, marker = user
    out = CliRunner().invoke(main, ["run", "mine.yaml", "--plugin", "mine.py", "--out", "out/r", "-q"])
    assert out.exit_code == 0, out.output
    assert marker.exists()
    assert yaml.safe_load((tmp_path / "out/r/scenario.yaml").read_text())["plugins"] == [str(plugin)]
    # a scenario that does not list it gets it from --plugin alone, recorded for the actors and a resume
    data = yaml.safe_load(scenario.read_text())
    del data["plugins"]
    (tmp_path / "bare.yaml").write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(main, ["run", "bare.yaml", "--plugin", "mine.py", "--out", "out/b", "-q"])
    assert out.exit_code == 0, out.output
    assert yaml.safe_load((tmp_path / "out/b/scenario.yaml").read_text())["plugins"] == [str(plugin)]
    assert (tmp_path / "out/b/metrics.jsonl").read_bytes() == (tmp_path / "out/r/metrics.jsonl").read_bytes()


def test_one_file_granted_under_two_spellings_is_recorded_once(user, tmp_path):
    """`--plugin mine.py --plugin ./mine.py` recorded the file twice in the run's plugins: list."""
    plugin, scenario, _ = user
    data = yaml.safe_load(scenario.read_text())
    del data["plugins"]
    for listed, granted in (
        ([], ["mine.py", "./mine.py"]),
        (["./mine.py"], ["mine.py", str(plugin)]),
        (["mine.py", "mine.py"], ["./mine.py"]),
    ):
        sc = resolve(data | {"plugins": listed}, plugins=granted)
        assert sc.plugins == [str(plugin)], (listed, granted)
    merged = plugins.merge(["b.py", "not a name!"], ["a.py", "./b.py", "not a name!", "pkg.rules", "a.py"])
    assert merged == ["b.py", "not a name!", "a.py", "pkg.rules"]  # first spelling, in order; two files stay two


def test_a_hand_written_plugins_list_with_duplicates_is_recorded_once(user, tmp_path):
    """A scenario listing one file twice (under one spelling or two), run with the file granted
    before and no plugins= of its own, recorded it as often as listed: the schema dedupes it with
    fedsim.plugins.merge, the dedupe of granted entries."""
    plugin, scenario, _ = user
    plugins.grant(["mine.py"])
    data = yaml.safe_load(scenario.read_text()) | {"plugins": ["mine.py", "./mine.py", "mine.py"]}
    assert resolve(data).plugins == [str(plugin)]
    r = fedsim.run(data, out=tmp_path / "out/dup")
    assert yaml.safe_load((tmp_path / "out/dup/scenario.yaml").read_text())["plugins"] == [str(plugin)]
    assert r.scenario.plugins == [str(plugin)]


def test_python_api_needs_plugins_too(user, small_scenario):
    plugin, scenario, marker = user
    with pytest.raises(ScenarioError, match=r"plugins: .*mine\.py: not imported.*add --plugin"):
        fedsim.run(scenario)
    with pytest.raises(ScenarioError, match=r"not imported"):
        fedsim.run(yaml.safe_load(scenario.read_text()))  # a mapping read from a file is no different
    assert not marker.exists()
    r = fedsim.run(scenario, plugins=["mine.py"])
    assert r.complete and r.scenario.plugins == [str(plugin)]


def test_resume_of_a_plugin_run_needs_its_plugin(user, tmp_path, monkeypatch):
    plugin, scenario, _ = user

    class StopAfterFirst:
        def on_round(self, record):
            return Stop("test") if record.round == 0 else None

    r = fedsim.run(scenario, out=tmp_path / "run", plugins=["mine.py"], callbacks=[StopAfterFirst()])
    assert not r.complete
    monkeypatch.setattr(plugins, "_GRANTED", set())  # a new process: `fedsim run --resume` alone
    before = _tree(r.dir)
    _refused(CliRunner().invoke(main, ["run", "--resume", str(r.dir), "-q"]), plugin)
    with pytest.raises(ScenarioError, match="not imported"):
        fedsim.resume(r.dir)
    assert _tree(r.dir) == before  # nothing lost, nothing written
    out = CliRunner().invoke(main, ["run", "--resume", str(r.dir), "--plugin", str(plugin), "-q"])
    assert out.exit_code == 0, out.output
    assert fedsim.load_run(r.dir).complete


def test_flower_apps_import_no_plugin_not_packed(user, tmp_path):
    """Without --plugin (fedsim flower export/demo/bundle/client) nothing grants a plugin to the Flower
    apps: export, demo and a ClientApp or ServerApp handed a scenario that lists one refuse it in the
    bridge's words, before any import (tests/test_flower_plugins.py: the packed ones)."""
    pytest.importorskip("flwr")
    from fedsim.flower import common

    plugin, scenario, marker = user
    before = _tree(tmp_path)
    for command in (["flower", "export", "mine.yaml", "app"], ["flower", "demo", "mine.yaml"]):
        out = CliRunner().invoke(main, command)
        assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1, out.output
        assert "not granted: the Flower apps import a plugin only when it was packed" in out.output
        assert "pass --plugin FILE to fedsim flower export or demo" in out.output
    for node in (None, {"partition-id": 0}):  # the ServerApp, a ClientApp
        with pytest.raises(common.BridgeError, match="not granted: the Flower apps import a plugin only when"):
            common.scenario_from_run_config({"scenario": scenario.read_text()}, node)
    assert not marker.exists() and _tree(tmp_path) == before
