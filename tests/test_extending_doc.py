"""docs/extending.md's examples are real: its plugin code blocks, written to a plugin file outside
the repository, register a rule, a forger, a poisoner, a backbone and a probe that a scenario runs,
and each has the effect its docstring claims; its callback example runs as written and stops where it says."""

import re
from pathlib import Path

import pytest
import yaml

import fedsim

DOC = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
PLUGIN_FILE = ""  # the doc's plugin, written by the fixture


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    text = DOC.read_text()
    blocks = [b for b in re.findall(r"```python\n(.+?)```", text, flags=re.S) if b.startswith("# my_plugins.py")]
    assert len(blocks) == 5
    path = tmp_path_factory.mktemp("user") / "my_plugins.py"
    path.write_text("\n\n".join(blocks))
    snippet = yaml.safe_load(re.findall(r"```yaml\n(.+?)```", text, flags=re.S)[0])
    global PLUGIN_FILE
    PLUGIN_FILE = str(path)  # as the reader names it: fedsim.run(..., plugins=[...]) / --plugin
    yield path, snippet
    # the doc's components leave the registries with this module: later tests iterate over them
    import attacks
    import strategies
    from fedsim.models.backbones import BACKBONES
    from fedsim.probe_registry import REGISTRY as PROBES

    PROBES.pop("consensus_distance", None)
    strategies.REGISTRY.pop("norm_filtered_mean", None)
    attacks.REGISTRY.pop("flipped_mean", None)
    attacks.REGISTRY.pop("shifted_labels", None)
    BACKBONES.pop("random_projection", None)


def _run(small_scenario, snippet, tmp_path, name, **over):
    d = small_scenario(rounds=6, **{"partition.kind": "iid", "topology.kind": "complete", "engine.num_actors": 1})
    d |= {k: v for k, v in snippet.items()}
    d["name"] = name
    return fedsim.run(d, overrides=over, out=tmp_path / name, plugins=[PLUGIN_FILE]).summary["final_accuracy_mean"]


def test_doc_rule_resists_the_doc_forger_that_breaks_the_mean(plugin, small_scenario, tmp_path):
    _, snippet = plugin
    robust = _run(small_scenario, snippet, tmp_path, "robust")
    mean = _run(small_scenario, snippet, tmp_path, "mean", **{"strategy.name": "fedavg", "strategy.params": {}})
    clean = _run(small_scenario, snippet, tmp_path, "clean", **{"peers.byzantine": 0, "peers.attack.name": "none"})
    assert mean < 0.5 * clean  # the forger works: -5 x the honest mean wrecks plain averaging
    assert robust > clean - 0.1  # the rule filters it out


def test_doc_poisoner_and_rule_check(plugin, small_scenario, tmp_path):
    _, snippet = plugin
    poisoned = _run(
        small_scenario,
        snippet,
        tmp_path,
        "poison",
        **{"peers.attack.name": "shifted_labels", "peers.attack.params": {"shift": 1}},
    )
    assert 0 < poisoned <= 1
    from fedsim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="kappa: must be a finite number > 0, got -1.0"):
        _run(small_scenario, snippet, tmp_path, "bad", **{"strategy.params": {"kappa": -1.0}})


def test_doc_scenario_snippet_is_valid_as_written(plugin):
    """The YAML block is a whole scenario a reader can copy: it validated only merged into the
    tests' small scenario before (its backbone takes 8x8 images, the default dataset is 28x28)."""
    path, snippet = plugin
    sc = fedsim.api.resolve(snippet, plugins=[str(path)])
    assert sc.dataset.name == "sklearn_digits" and sc.backbone.name == "random_projection"


def test_doc_backbone_makes_the_features(plugin, small_scenario, tmp_path):
    _, snippet = plugin
    from fedsim.prepare import prepare

    d = small_scenario() | snippet
    assert prepare(fedsim.api.resolve(d, plugins=[PLUGIN_FILE])).info["feature_dim"] == 32


def test_doc_callback_stops_where_it_says_and_resumes(tmp_path, monkeypatch):
    """The "Callbacks" example, executed as written from the repository root (the quickstart,
    in-process); its run directories go under tmp_path."""
    import tempfile

    text = DOC.read_text()
    (block,) = [b for b in re.findall(r"```python\n(.+?)```", text, flags=re.S) if b.startswith("# a callback")]
    monkeypatch.chdir(DOC.parent.parent)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ns: dict = {}
    exec(compile(block, str(DOC), "exec"), ns)
    r, full, stop = ns["r"], ns["full"], ns["stop"]
    evals = [(h["round"], h["accuracy_mean"]) for h in full.evaluations]
    first = next(rnd for rnd, acc in evals if acc >= 0.9)
    assert not r.complete and r.history[-1]["round"] == first < full.scenario.rounds - 1
    assert len(stop.seconds) == first + 1 and all(s > 0 for s in stop.seconds)
    assert full.complete and [h["round"] for h in full.history] == list(range(full.scenario.rounds))
    assert full.summary["resumed_after_round"] == first and full.history[: first + 1] == r.history


def test_doc_probe_runs_from_the_plugin_against_a_control(plugin, small_scenario, tmp_path):
    """The doc's probe: decentralized peers on a ring end apart (distance > 0); in federated mode
    every client holds the one global head, the control where the distance is 0."""
    import json

    from fedsim.report_probes import format_probes

    _, snippet = plugin
    probe = {"probes": [{"kind": "consensus_distance"}]}
    _run(
        small_scenario,
        snippet | probe,
        tmp_path,
        "probe_dec",
        **{"peers.byzantine": 0, "peers.attack.name": "none", "topology.kind": "ring"},
    )
    entry = json.loads((tmp_path / "probe_dec" / "probes.json").read_text())[0]
    assert entry["kind"] == "consensus_distance" and entry["relative"] is True and len(entry["records"]) == 12
    assert entry["max"] > 1e-3
    summary = json.loads((tmp_path / "probe_dec" / "summary.json").read_text())
    assert summary["probes"] == [{"kind": "consensus_distance", "max": entry["max"]}]
    assert "| max |" in format_probes([entry])  # no Markdown of its own: its scalar fields
    _run(
        small_scenario,
        snippet | probe,
        tmp_path,
        "probe_fed",
        **{"peers.byzantine": 0, "peers.attack.name": "none", "mode": "federated", "topology.kind": "star"},
    )
    control = json.loads((tmp_path / "probe_fed" / "probes.json").read_text())[0]
    assert control["max"] == 0.0


def test_doc_probe_is_checked_and_listed(plugin, small_scenario, tmp_path):
    from click.testing import CliRunner

    from fedsim.cli import main
    from fedsim.scenario import ScenarioError

    path, snippet = plugin
    with pytest.raises(ScenarioError, match=r"probes\.0\.relative: must be true or false, got 'yes'"):
        _run(small_scenario, snippet | {"probes": [{"kind": "consensus_distance", "relative": "yes"}]}, tmp_path, "b1")
    with pytest.raises(ScenarioError, match=r"probes\.0\.scale: unknown key for kind consensus_distance"):
        _run(small_scenario, snippet | {"probes": [{"kind": "consensus_distance", "scale": 2}]}, tmp_path, "b2")
    out = CliRunner().invoke(main, ["list", "probe", "--plugin", str(path)]).output
    assert "consensus_distance" in out and "unlearning" in out and "cloning" in out
    out = CliRunner().invoke(main, ["list", "probe", "consensus_distance", "--plugin", str(path)]).output
    assert "relative" in out and "divide each distance by the norm of the mean head" in out
    assert "true or false" in out  # the declared constraint, as the error above says it


def test_doc_names_every_built_in_probe():
    """The probe section listed two built-ins after two more were added (stale)."""
    from fedsim.probe_registry import kinds

    text = DOC.read_text()
    for kind in set(kinds()) - {"consensus_distance"}:  # the doc's own example, if registered
        assert f"`{kind}`" in text, kind


def test_doc_commands_run_as_written(plugin, monkeypatch):
    """The page's shell commands, each run through the CLI in a folder holding the page's
    my_plugins.py and my_scenario.yaml (the YAML block as written): validate, run, sweep, resume.
    Without --plugin the same scenario is refused in the line the page shows."""
    import shlex

    from click.testing import CliRunner

    from fedsim.cli import main

    path, _ = plugin
    text = DOC.read_text()
    (scenario,) = [b for b in re.findall(r"```yaml\n(.+?)```", text, flags=re.S) if b.startswith("# my_scenario.yaml")]
    (commands,) = [b for b in re.findall(r"```bash\n(.+?)```", text, flags=re.S) if "--plugin my_plugins.py" in b]
    tmp_path = path.parent  # the fixture's my_plugins.py (its names are registered in this process already)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_scenario.yaml").write_text(scenario)
    lines = [ln.split("#")[0].strip() for ln in commands.strip().splitlines()]
    assert [ln.split()[:2] for ln in lines] == [
        ["fedsim", "validate"],
        ["fedsim", "run"],
        ["fedsim", "sweep"],
        ["fedsim", "run"],
    ]
    results = [CliRunner().invoke(main, shlex.split(ln)[1:]) for ln in lines]
    assert [r.exit_code for r in results] == [0, 0, 0, 1], [r.output for r in results]
    assert "is complete (summary.json exists); nothing to resume" in results[3].output  # the run above finished
    assert fedsim.load_run(tmp_path / "runs/mine").complete
    assert len(fedsim.load_run(tmp_path / "runs/mine").history) == 10
    # the refusal the page quotes, for the page's own files
    from fedsim import plugins

    monkeypatch.setattr(plugins, "_GRANTED", set())
    (tmp_path / "listed.yaml").write_text(scenario + "plugins: [my_plugins.py]\n")
    out = CliRunner().invoke(main, ["run", "listed.yaml", "--out", "runs/refused"])
    (shown,) = [ln for ln in text.splitlines() if ln.startswith("Error: my_scenario.yaml: plugins:")]
    assert out.exit_code == 1 and not (tmp_path / "runs/refused").exists()
    expected = shown.replace("my_scenario.yaml", "listed.yaml", 1).replace(
        "/home/me/my_plugins.py", str(tmp_path / "my_plugins.py")
    )
    assert out.output.strip() == expected


def _run_doc_block(plugin, monkeypatch, first_line: str) -> None:
    """Execute the page's one python block that starts with ``first_line``, as written, in the
    folder of the page's my_plugins.py (the ``plugin`` fixture)."""
    path, _ = plugin
    blocks = re.findall(r"```python\n(.+?)```", DOC.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    monkeypatch.chdir(path.parent)
    exec(compile(block, str(DOC), "exec"), {})


def test_doc_check_your_rule_runs_as_written(plugin, monkeypatch, capsys):
    """The "Check your rule" block, executed as written next to the page's my_plugins.py: the
    doc's rule passes every case."""
    _run_doc_block(plugin, monkeypatch, "# check my rule")
    n = int(capsys.readouterr().out.split()[0])
    assert n > 200  # 200 seeded cases (those norm_filtered_mean's check accepts) and 24 agreement cases


def test_doc_check_your_attack_runs_as_written(plugin, monkeypatch, capsys):
    """The "Check your attack" block, executed as written next to the page's my_plugins.py: the
    doc's forger passes every check of every case (it forges one row per sender, so also when the
    Byzantine peers do not collude)."""
    import attacks
    from fedsim.checks_attacks import cases

    _run_doc_block(plugin, monkeypatch, "# check my attack")
    n = int(capsys.readouterr().out.split()[0])
    assert n == 3 * len(cases(attacks.build("flipped_mean"), range(5))) + 1  # 3 checks a case, then the reads


def test_doc_check_your_backbone_runs_as_written(plugin, monkeypatch, capsys):
    """The "Check your backbone" block, executed as written next to the page's my_plugins.py: the
    doc's backbone has every property the engine relies on."""
    _run_doc_block(plugin, monkeypatch, "# check my backbone")
    assert capsys.readouterr().out == "4 properties passed\n"


def test_doc_check_your_probe_runs_as_written(plugin, monkeypatch, capsys):
    """The "Check your probe" block, executed as written next to the page's my_plugins.py: the
    doc's probe passes on the tiny run (its entry read by the report's generic table)."""
    _run_doc_block(plugin, monkeypatch, "# check my probe")
    assert capsys.readouterr().out == "4 properties passed\n"
