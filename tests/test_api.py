"""The Python API (fedsim.run / fedsim.load_run) runs what `fedsim run` runs and reads back the
very records the run wrote."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import fedsim
from fedsim.api import RunResultError
from fedsim.cli import main
from fedsim.errors import FedsimError
from fedsim.scenario import ScenarioError, parse


def test_run_returns_history_summary_heads_and_plan(small_scenario, tmp_path):
    seen = []
    r = fedsim.run(small_scenario(), overrides={"rounds": 3, "peers.byzantine": 2, "peers.attack.name": "sign_flip",
                                                "strategy.name": "median"},
                   out=tmp_path / "api", progress=lambda rnd, rec: seen.append(rnd))
    assert seen == [0, 1, 2]
    assert [h["round"] for h in r.history] == [0, 1, 2]
    lines = (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()
    assert r.history == [json.loads(x) for x in lines]  # the run's own record, not a copy
    assert r.complete and r.summary["final_accuracy_mean"] == r.evaluations[-1]["accuracy_mean"]
    assert r.scenario.rounds == 3 and r.scenario.strategy.name == "median"
    assert r.plan["byzantine_ids"] == [int(i) for i in np.flatnonzero(_byz(r.scenario))]
    assert len(r.plan["byzantine_ids"]) == 2 and r.plan["f"] == r.summary["f"]
    assert r.final_params.shape == (8, r.plan["num_params"])
    assert np.isfinite(r.final_params).all() and np.abs(r.final_params).sum() > 0


@pytest.mark.parametrize("over", [{}, {"topology": {"kind": "erdos_renyi", "p": 0.1}},
                                  {"topology": {"kind": "push_gossip", "fanout": 2}}])
def test_byzantine_in_neighbours_counts_each_peers_byzantine_senders(over):
    """A brute-force count per peer (push gossip leaves some peers with no sender: 0)."""
    from fedsim.runfacts import build_topology, byzantine_in_neighbours
    from fedsim.scenario import load

    sc = load("scenarios/attack_matrix.yaml", overrides=over)
    topo, byz = build_topology(sc), _byz(sc)
    ptr, idx = topo.in_neighbors(0)
    brute = [int(byz[idx[ptr[i]:ptr[i + 1]]].sum()) for i in range(topo.n)]
    assert byzantine_in_neighbours(topo, byz).tolist() == brute


def test_plan_counts_honest_peers_hearing_more_than_f(small_scenario, tmp_path):
    """f is the expected number of Byzantine in-neighbours, rounded up; the plan says how many
    honest peers hear more (README's attack matrix, seed 0: 3 of 21 hear 4 or 5 with f = 3)."""
    from fedsim.runfacts import build_topology, byzantine_in_neighbours

    r = fedsim.run(small_scenario(), overrides={"rounds": 1, "peers.count": 16, "peers.byzantine": 4,
                                                "peers.attack.name": "sign_flip", "strategy.name": "median"},
                   out=tmp_path / "over_f")
    heard = byzantine_in_neighbours(build_topology(r.scenario), _byz(r.scenario))[~_byz(r.scenario)]
    assert r.plan["f"] == 1 and r.plan["max_byzantine_in_neighbours"] == heard.max()  # f = ceil(4/16 * 4)
    assert r.plan["honest_over_f"] == int((heard > 1).sum())
    assert 0 < r.plan["honest_over_f"] < 12  # seed 3 places them so (3 of 12): some, not all, honest peers


def _byz(sc):
    from fedsim.scenario import byzantine_mask

    return byzantine_mask(sc)


def test_api_and_cli_give_byte_identical_metrics(small_scenario, tmp_path):
    d = small_scenario(rounds=3)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["run", str(path), "-q", "--set", "seed=5"])
    assert res.exit_code == 0, res.output
    cli_metrics = (tmp_path / "runs" / "t" / "metrics.jsonl").read_bytes()
    r = fedsim.run(path, overrides={"seed": 5}, out=tmp_path / "api")
    assert (r.dir / "metrics.jsonl").read_bytes() == cli_metrics
    again = fedsim.load_run(tmp_path / "runs" / "t")
    assert again.history == r.history and again.summary["final_accuracy_mean"] == r.summary["final_accuracy_mean"]


def test_default_out_is_a_fresh_directory_each_call(small_scenario):
    a = fedsim.run(small_scenario(rounds=1))
    b = fedsim.run(small_scenario(rounds=1))
    assert a.dir != b.dir and a.dir.name == b.dir.name == "t"
    assert a.history == b.history  # same seed, same numbers


def test_scenario_object_and_bad_overrides(small_scenario, tmp_path):
    sc = parse(small_scenario(rounds=1))
    r = fedsim.run(sc, out=tmp_path / "o")
    assert len(r.history) == 1
    with pytest.raises(ScenarioError, match="strategy"):
        fedsim.run(sc, overrides={"strategy.name": "bulyn"}, out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # nothing run, nothing written
    with pytest.raises(TypeError, match="path, a mapping or a Scenario"):
        fedsim.run(42)


def test_a_scenario_as_yaml_text_runs_as_its_file_does(small_scenario, tmp_path):
    """A notebook's scenario pasted as YAML text (before: taken for a path, "name: t ...: no such
    file") runs to the same bytes as the same text in a file; text that is no mapping, or one line
    that looks like YAML, is one clear line, nothing made."""
    text = yaml.safe_dump(small_scenario(rounds=2))
    path = tmp_path / "s.yaml"
    path.write_text(text)
    a = fedsim.run(text, overrides={"seed": 5}, out=tmp_path / "text")
    b = fedsim.run(path, overrides={"seed": 5}, out=tmp_path / "file")
    assert (a.dir / "metrics.jsonl").read_bytes() == (b.dir / "metrics.jsonl").read_bytes()
    assert a.scenario == b.scenario and len(a.history) == 2
    with pytest.raises(ScenarioError, match=r"^scenario \(YAML text\): the top level must be a mapping of sections, "
                                            r"got list$"):
        fedsim.run("- rounds: 2\n- seed: 1\n", out=tmp_path / "no")
    with pytest.raises(ScenarioError, match=r"^scenario \(YAML text\): not valid YAML \(line 2"):
        fedsim.run("rounds: 2\n  seed: [1\n", out=tmp_path / "no")
    with pytest.raises(ScenarioError, match=r"^'\{rounds: 2\}': no such file \(YAML text spans lines"):
        fedsim.run("{rounds: 2}", out=tmp_path / "no")
    assert not (tmp_path / "no").exists()


def test_existing_results_are_kept_unless_overwrite(small_scenario, tmp_path):
    fedsim.run(small_scenario(rounds=1), out=tmp_path / "o")
    with pytest.raises(FedsimError, match="overwrite"):
        fedsim.run(small_scenario(rounds=2), out=tmp_path / "o")
    assert len(fedsim.load_run(tmp_path / "o").history) == 1
    assert len(fedsim.run(small_scenario(rounds=2), out=tmp_path / "o", overwrite=True).history) == 2


def test_load_run_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(RunResultError, match="not a fedsim run directory"):
        fedsim.load_run(tmp_path)


def test_load_run_reads_the_scenario_with_the_bounded_reader(small_scenario, tmp_path):
    """``load_run(dir).scenario`` is the dict ``scenario.yaml`` records (the run's Scenario dumped as
    JSON); the file goes through fedsim.yamlsafe.read_yaml like every scenario file: a duplicate key,
    a file over the size cap or a non-mapping is one RunResultError line, nothing returned."""
    from fedsim._runs import load_run as read_run_dir
    from fedsim.yamlsafe import MAX_YAML_BYTES

    r = fedsim.run(small_scenario(rounds=1), out=tmp_path / "o")
    got = fedsim.load_run(r.dir)
    assert isinstance(got.scenario, dict) and got.scenario == r.scenario.model_dump(mode="json")
    assert parse(got.scenario) == r.scenario  # the object, made from the dict
    path = r.dir / "scenario.yaml"
    text = path.read_text()
    for bad, msg in (
        (text + "rounds: 400\n", "duplicate key 'rounds'"),
        ("- 1\n- 2\n", "holds a list, not a scenario"),
        ("#" * (MAX_YAML_BYTES + 1), "scenario files are at most"),
        ("x: " + "[" * 40 + "]" * 40 + "\n", "nested deeper than"),
    ):
        path.write_text(bad)
        with pytest.raises(RunResultError, match=msg) as e:
            fedsim.load_run(r.dir)
        assert "\n" not in str(e.value) and str(r.dir) in str(e.value)
        with pytest.raises(ScenarioError, match=msg):  # fedsim report / plot read runs the same way
            read_run_dir(r.dir)
    path.unlink()
    with pytest.raises(RunResultError, match="scenario.yaml is missing; the run did not start"):
        fedsim.load_run(r.dir)


def test_to_pandas_indexes_by_round(small_scenario, tmp_path):
    pd = pytest.importorskip("pandas")
    df = fedsim.run(small_scenario(rounds=2), out=tmp_path / "o").to_pandas()
    assert isinstance(df, pd.DataFrame) and list(df.index) == [0, 1]


def test_import_fedsim_stays_light():
    code = "import sys, fedsim; print(int(any(m in sys.modules for m in ('torch', 'ray'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0"


def test_python_m_fedsim_is_the_fedsim_command():
    """`python -m fedsim` runs the console script's entry point (pyproject `[project.scripts]`)."""
    from pathlib import Path

    import tomllib

    from fedsim.cli import main

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedsim"] == "fedsim.cli:main"
    res = subprocess.run([sys.executable, "-m", "fedsim", "--help"], capture_output=True, text=True, timeout=120,
                         cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    assert res.returncode == 0, res.stderr[-2000:]
    ours = CliRunner().invoke(main, ["--help"], prog_name="fedsim")
    # the same help as the console script's, past the usage line (click names the program by how it
    # started), up to line wrapping (the terminal's width)
    usage, rest = res.stdout.split("\n", 1)
    assert usage.startswith("Usage: python -m fedsim ")
    assert rest.split() == ours.output.split("\n", 1)[1].split()


def test_load_run_reads_back_every_rounds_record(small_scenario, tmp_path):
    """``load_run(dir).records``: each round's metrics as ``metrics.jsonl`` holds them and its phases
    as ``timings.jsonl`` holds them (4 decimals); never a partial list."""
    import json

    r = fedsim.run(small_scenario(rounds=3), out=tmp_path / "o")
    got = fedsim.load_run(r.dir)
    assert [x.round for x in got.records] == [0, 1, 2]
    assert [x.metrics for x in got.records] == r.history
    assert [x.phases for x in got.records] == [{k: round(v, 4) for k, v in x.phases.items()} for x in r.records]
    assert [x.evaluated for x in got.records] == [x.evaluated for x in r.records]
    assert all(x.messages is None for x in got.records)
    assert got.plan == {k: r.plan[k] for k in ("f", "num_params", "honest_over_f", "max_byzantine_in_neighbours")}
    timings = r.dir / "timings.jsonl"
    lines = timings.read_text().splitlines()
    timings.write_text("\n".join([*lines[:2], json.dumps({"round": 2, "seconds": 0.1})]) + "\n")  # no phases
    assert fedsim.load_run(r.dir).records == [] and len(fedsim.load_run(r.dir).history) == 3
    timings.write_text("\n".join(lines[:2]) + "\n")  # a round without its timing line
    assert fedsim.load_run(r.dir).records == []
    timings.unlink()
    assert fedsim.load_run(r.dir).records == []


def test_a_refused_run_leaves_no_temporary_folder(small_scenario, tmp_path, monkeypatch):
    """`fedsim.run(d)` with no `out` made `/tmp/fedsim-XXXX` before the cluster address was checked,
    and left it empty when the check failed."""
    pytest.importorskip("ray")
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    d = small_scenario(engine={"backend": "ray", "num_actors": 1, "address": "127.0.0.1:1"})
    with pytest.raises(FedsimError, match="no live Ray cluster at "):
        fedsim.run(d)
    assert list(tmp.iterdir()) == []
    monkeypatch.setattr("fedsim.runner.Run.execute", lambda self, **kw: None)  # control: a run that starts keeps it
    d["engine"] = {"backend": "local", "num_actors": 1}
    fedsim.run(d)
    (made,) = tmp.iterdir()
    assert made.name.startswith("fedsim-") and (made / "t" / "scenario.yaml").exists()


def test_arguments_of_the_wrong_shape_are_one_clear_error_before_anything_is_made(small_scenario, tmp_path):
    """A notebook's likely slips, each named with the fix, and no run directory made: one plugin
    file as a string (before: its characters were the plugins, "'.' is neither a .py file ..."),
    --set's KEY=VALUE strings as overrides (before: "dictionary update sequence element #0 has
    length 8"), one callback or a function instead of a list (before: "... is not iterable", after
    the run directory was made)."""
    from fedsim.callbacks import Callback

    out = tmp_path / "run"
    with pytest.raises(ScenarioError, match=r"plugins: expected a list of \.py files or modules, got the single str "
                                            r"'my_plugins\.py': write \['my_plugins\.py'\]$"):
        fedsim.run(small_scenario(), out=out, plugins="my_plugins.py")
    with pytest.raises(TypeError, match=r"^overrides: expected a mapping of dotted keys to values, e.g\. "
                                        r"\{'rounds': 10, 'strategy\.name': 'median'\} \(--set's KEY=VALUE\), got "
                                        r"list \['rounds=3'\]$"):
        fedsim.run(small_scenario(), ["rounds=3"], out=out)
    for one, what in ((Callback(), "Callback"), (lambda rec: None, "a function")):
        with pytest.raises(TypeError, match=rf"^callbacks: expected a list of callbacks, got {what}: write "
                                            r"callbacks=\[\.\.\.\]"):
            fedsim.run(small_scenario(), out=out, callbacks=one)
    assert not out.exists()


def _count_final_params(monkeypatch) -> list[int]:
    """Spy on Simulation.final_params: one entry per call (the heads are still returned)."""
    from fedsim.simulation import Simulation

    calls: list[int] = []
    real = Simulation.final_params

    def spy(self):
        calls.append(1)
        return real(self)

    monkeypatch.setattr(Simulation, "final_params", spy)
    return calls


def test_fedsim_run_and_sweep_never_fetch_the_final_heads_the_api_does(small_scenario, tmp_path, monkeypatch):
    """`fedsim run` and `fedsim sweep` read no heads after the last round: they never ask the
    groups for them (220 MiB float32 in the driver at 10,000 peers, docs/performance.md); the
    Python API returns them unless called with final_params=False, the same metrics either way."""
    from fedsim.sweep_execute import execute_sweep
    from fedsim.sweep_plan import plan_sweep

    calls = _count_final_params(monkeypatch)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_scenario(rounds=2)))
    res = CliRunner().invoke(main, ["run", str(path), "-q"])
    assert res.exit_code == 0, res.output
    assert calls == [] and (tmp_path / "runs" / "t" / "summary.json").exists()
    done = execute_sweep(plan_sweep(path, {"seed": [0, 1]}, out=tmp_path / "sw"), local=True)
    assert len(done.ran) == 2 and not done.failed and calls == []
    r = fedsim.run(path, out=tmp_path / "api")
    assert calls == [1] and r.final_params.shape == (8, r.plan["num_params"])
    none = fedsim.run(path, out=tmp_path / "none", final_params=False)
    assert calls == [1] and none.final_params is None
    assert none.summary["final_accuracy_mean"] == r.summary["final_accuracy_mean"]
    assert (none.dir / "metrics.jsonl").read_bytes() == (r.dir / "metrics.jsonl").read_bytes() == (
        tmp_path / "runs" / "t" / "metrics.jsonl").read_bytes()


def test_probes_get_the_final_heads_when_the_run_keeps_none(small_scenario, tmp_path, monkeypatch):
    """Run(fetch_final_params=False) (what `fedsim run` makes) still fetches the heads when its
    probes read them: the probes get the same array a run that keeps them holds."""
    import fedsim.probe_runs
    from fedsim.runner import Run

    got = []
    monkeypatch.setattr(fedsim.probe_runs, "run_probes", lambda run, prep, heads, retrain: got.append(heads) or {})
    sc = parse(small_scenario(rounds=2, **{"topology.kind": "ring",
                                           "probes": [{"kind": "gossip_cloning", "rounds_observed": [1]}]}))
    r = Run(sc, tmp_path / "probed", fetch_final_params=False)
    r.create_dir()
    r.execute()
    kept = Run(sc.model_copy(update={"probes": []}), tmp_path / "kept")
    kept.create_dir()
    kept.execute()
    assert len(got) == 1 and got[0] is r.final_params
    assert np.array_equal(r.final_params, kept.final_params)


def test_resumes_fetch_the_heads_only_when_asked(small_scenario, tmp_path, monkeypatch):
    """``fedsim run --resume`` reads no final heads; ``fedsim.resume(final_params=False)`` neither;
    a plain ``fedsim.resume`` returns them (the resume paths were untested; review)."""
    from fedsim.callbacks import StopAfter

    calls = _count_final_params(monkeypatch)
    for name in ("cli", "api", "kept"):
        fedsim.run(small_scenario(name=name, rounds=3), out=tmp_path / name, callbacks=[StopAfter(0)])
    res = CliRunner().invoke(main, ["run", "--resume", str(tmp_path / "cli"), "-q"])
    assert res.exit_code == 0, res.output
    assert calls == []
    assert fedsim.resume(tmp_path / "api", final_params=False).final_params is None and calls == []
    assert fedsim.resume(tmp_path / "kept").final_params is not None and calls == [1]
