"""`fedsim report`: the Markdown table's numbers equal those recomputed from metrics.jsonl."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim.report import report
from fedsim.sweep_execute import execute_sweep
from fedsim.sweep_plan import plan_sweep

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def _tiny_file(tmp: Path, rounds: int, local_steps: int) -> Path:
    """A 6-peer scenario file on sklearn digits, in-process (the sweeps of these tests)."""
    sc = {
        "name": "tiny",
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "peers": {"count": 6},
        "topology": {"kind": "k_regular", "degree": 2},
        "rounds": rounds,
        "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": local_steps},
        "engine": {"backend": "local", "num_actors": 1},
    }
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    path = _tiny_file(tmp, rounds=4, local_steps=2)
    plan = plan_sweep(path, {"strategy.name": ["fedavg", "local"], "seed": [0, 1, 2]}, out=tmp / "sw")
    res = execute_sweep(plan, local=True)
    assert not res.failed
    return plan.out


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _expected(sweep_dir: Path, strategy: str, target: float) -> dict:
    runs = sorted(p for p in sweep_dir.iterdir() if p.name.startswith(f"strategy.name={strategy}__"))
    finals, reached, per_peer, total = [], [], [], []
    for r in runs:
        ms = _metrics(r)
        ev = [m for m in ms if "accuracy_mean" in m]
        finals.append(ev[-1]["accuracy_mean"])
        hit = [m["round"] + 1 for m in ev if m["accuracy_mean"] >= target]
        if hit:
            reached.append(hit[0])
        per_peer.append(sum(m["bytes_sent_per_peer"] for m in ms))
        total.append(sum(m["bytes_sent_total"] for m in ms))
    return {
        "runs": len(runs),
        "mean": statistics.mean(finals),
        "std": statistics.stdev(finals),
        "reached": reached,
        "per_peer": statistics.mean(per_peer),
        "total": statistics.mean(total),
    }


def _table(md: str) -> list[dict[str, str]]:
    lines = [x for x in md.splitlines() if x.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").replace("-", "").replace(":", "")) <= {""}
    return [dict(zip(head, (c.strip() for c in x.strip("|").split("|")), strict=True)) for x in lines[2:]]


def _bytes(cell: str) -> float:
    num, unit = cell.split()
    return float(num) * UNITS[unit]


def test_markdown_numbers_equal_metrics(sweep_dir) -> None:
    all_acc = sorted(
        m["accuracy_mean"]
        for p in sweep_dir.glob("*/metrics.jsonl")
        for m in _metrics(p.parent)
        if "accuracy_mean" in m
    )
    target = all_acc[len(all_acc) // 2]  # some runs reach it, some may not
    res = CliRunner().invoke(report, [str(sweep_dir), "--target", str(target)])
    assert res.exit_code == 0, res.output
    rows = _table(res.output)
    assert [r["strategy"] for r in rows] == ["fedavg", "local"]
    assert f"rounds to {100 * target:g}%" in rows[0]
    for row in rows:
        exp = _expected(sweep_dir, row["strategy"], target)
        assert int(row["runs"]) == exp["runs"] == 3
        m, s = (float(x) for x in row["final accuracy (%)"].split("±"))
        assert m == pytest.approx(100 * exp["mean"], abs=0.005 + 1e-9)
        assert s == pytest.approx(100 * exp["std"], abs=0.005 + 1e-9)
        cell = row[f"rounds to {100 * target:g}%"]
        if not exp["reached"]:
            assert cell == "not reached"
        else:
            nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", cell)]
            assert nums[0] == pytest.approx(statistics.mean(exp["reached"]), abs=0.05)
            if len(exp["reached"]) < 3:
                assert f"({len(exp['reached'])}/3)" in cell
        assert _bytes(row["bytes sent / peer"]) == pytest.approx(exp["per_peer"], rel=0.01)
        assert _bytes(row["bytes sent (all peers)"]) == pytest.approx(exp["total"], rel=0.01)


def test_csv_is_exact(sweep_dir) -> None:
    res = CliRunner().invoke(report, [str(sweep_dir), "--format", "csv", "--target", "90"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    for row in rows:
        exp = _expected(sweep_dir, row["strategy.name"], 0.9)
        assert float(row["final_accuracy_mean"]) == pytest.approx(exp["mean"], rel=1e-12)
        assert float(row["final_accuracy_std"]) == pytest.approx(exp["std"], rel=1e-12)
        assert float(row["bytes_sent_total"]) == exp["total"] and float(row["target"]) == 0.9
        assert int(row["runs_reaching_target"]) == len(exp["reached"])


def test_single_run_grouping_and_incomplete(sweep_dir, tmp_path) -> None:
    run = next(sweep_dir.glob("strategy.name=local__seed=0"))
    res = CliRunner().invoke(report, [str(run)])
    assert res.exit_code == 0, res.output
    (row,) = _table(res.output)
    final = [m for m in _metrics(run) if "accuracy_mean" in m][-1]["accuracy_mean"]
    assert row["strategy"] == "local" and row["runs"] == "1"
    assert float(row["final accuracy (%)"]) == pytest.approx(100 * final, abs=0.005 + 1e-9)
    # --by pools everything with one key; an incomplete run is left out and said so
    res = CliRunner().invoke(report, [str(sweep_dir), "--by", "seed"])
    assert [r["seed"] for r in _table(res.output)] == ["0", "1", "2"]
    summary = run / "summary.json"
    saved = summary.read_bytes()
    summary.unlink()
    try:
        out = tmp_path / "r.md"
        res = CliRunner().invoke(report, [str(sweep_dir), "--out", str(out)])
        text = out.read_text()
        assert ("Left out of the table: 1 incomplete run(s) (no summary.json): strategy.name=local__seed=0 "
                "not finished") in text and _table(text)[1]["runs"] == "2"
    finally:
        summary.write_bytes(saved)
    assert not math.isnan(final)


def test_rounds_to_target_states_the_evaluation_grid(sweep_dir, tmp_path) -> None:
    """Rounds to target can only be an evaluated round: with every round evaluated (the fixture)
    the footer says nothing of the kind; with evaluation.every = 5 it says a value may be up to 4
    rounds late."""
    res = CliRunner().invoke(report, [str(sweep_dir)])
    assert res.exit_code == 0 and "rounds late" not in res.output, res.output
    run = tmp_path / "every5"
    shutil.copytree(next(sweep_dir.glob("strategy.name=local__seed=0")), run)
    sc = yaml.safe_load((run / "scenario.yaml").read_text())
    assert sc["evaluation"]["every"] == 1
    sc["evaluation"]["every"] = 5
    (run / "scenario.yaml").write_text(yaml.safe_dump(sc))
    res = CliRunner().invoke(report, [str(run)])
    assert "evaluated every 5 rounds (and at the last)" in res.output and "up to 4 rounds late" in res.output
    sc["evaluation"]["every"] = 2  # one round late, not "1 rounds"
    (run / "scenario.yaml").write_text(yaml.safe_dump(sc))
    res = CliRunner().invoke(report, [str(run)])
    assert "evaluated every 2 rounds (and at the last)" in res.output and "up to 1 round late." in res.output


def test_a_failed_run_is_named_with_its_error_in_report_and_plot(tmp_path, monkeypatch, seed1_fails) -> None:
    """A sweep's run that failed before its first round (error.txt, no metrics) once vanished from
    `fedsim report` and `fedsim plot`: the table said runs = 1 and nothing else. Now the report, its
    CSV (on stderr) and the plot name it with the error; a sweep whose every run failed is one line."""
    import fedsim.runner

    path = _tiny_file(tmp_path, rounds=2, local_steps=1)
    plan = plan_sweep(path, {"seed": [0, 1]}, out=tmp_path / "sw")
    res = execute_sweep(plan, local=True)
    assert res.ran == ["seed=0"] and list(res.failed) == ["seed=1"]
    why = f"seed=1 failed before its first round: RuntimeError: boom ({plan.out / 'seed=1' / 'error.txt'})"
    res = CliRunner().invoke(report, [str(plan.out)])
    assert res.exit_code == 0, res.output
    assert _table(res.output)[0]["runs"] == "1"
    assert f"Left out of the table: 1 incomplete run(s) (no summary.json): {why}" in res.output, res.output
    res = CliRunner().invoke(report, [str(plan.out), "--format", "csv"])
    assert res.exit_code == 0 and why in res.stderr and "boom" not in res.stdout
    from fedsim.plot import plot, plot_dir

    notes: list[str] = []
    assert plot_dir(plan.out, tmp_path / "figs", ["png"], log=notes.append)
    assert any(why in n for n in notes), notes
    import fedsim
    from fedsim.api import RunResultError

    with pytest.raises(RunResultError, match=r"seed=1: metrics\.jsonl is missing; it failed: RuntimeError: boom \("):
        fedsim.load_run(plan.out / "seed=1")
    # in a folder of runs (runs/), a run folder that failed at start is named too
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(plan.out / "seed=1", runs / "failed")
    shutil.copytree(plan.out / "seed=0", runs / "ok")
    res = CliRunner().invoke(report, [str(runs)])
    assert res.exit_code == 0 and "failed failed before its first round: RuntimeError: boom" in res.output, res.output
    # a folder with only a scenario.yaml (a run starting right now, or someone's notes): passed over, not listed
    (runs / "starting").mkdir()
    shutil.copy(plan.out / "seed=1" / "scenario.yaml", runs / "starting" / "scenario.yaml")
    res = CliRunner().invoke(report, [str(runs)])
    assert res.exit_code == 0 and "starting" not in res.output, res.output
    # every run failed: one line naming them, not "no run directories found"
    def broken(self, *a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(fedsim.runner.Run, "execute", broken)
    plan = plan_sweep(path, {"seed": [2, 3]}, out=tmp_path / "all-failed")
    assert len(execute_sweep(plan, local=True).failed) == 2
    for cmd in (report, plot):
        res = CliRunner().invoke(cmd, [str(plan.out)])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert "no run has recorded a round yet; 2 incomplete run(s) (no summary.json): seed=2 failed" in res.output


def test_errors(tmp_path) -> None:
    res = CliRunner().invoke(report, [str(tmp_path)])
    assert res.exit_code != 0 and "no run directories" in res.output


def test_by_an_unknown_key_is_one_line_with_the_closest(sweep_dir) -> None:
    """`--by strategy.nme` grouped every run under one 'None' row and exited 0."""
    res = CliRunner().invoke(report, [str(sweep_dir), "--by", "strategy.nme"])
    assert res.exit_code == 2 and "'strategy.nme': no run's scenario has this key (did you mean 'strategy.name'?)" \
        in res.output, res.output
    res = CliRunner().invoke(report, [str(sweep_dir), "--by", "strategy"])  # a section is a key too
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    ("probes", "why"),
    [
        ([{"kind": "unlearning", "records": "abc"}], "entry 0: records is not a list"),
        ({"kind": "cloning", "records": [{"x": 1}]}, "entry 0 (cloning): missing field 'defence'"),
        (5, "top level is int, not a list of entries or one entry"),
        ([{"kind": "cloning", "records": [{"x": 1}]}, 7], "entry 1: is int, not an object"),
        ([{"records": []}], "entry 0: kind is not a string"),
        ([{"kind": "unlearning", "records": [1]}], "entry 0: records[0] is not an object"),
    ],
)
def test_an_oddly_shaped_probes_json_is_one_line_and_the_report_goes_on(sweep_dir, tmp_path, probes, why) -> None:
    """A well-formed probes.json of another shape than docs/probes.md's crashed the whole report
    (AttributeError, KeyError, TypeError): now that run's probes section is one line saying why."""
    for name in ("strategy.name=local__seed=0", "strategy.name=fedavg__seed=0"):
        shutil.copytree(sweep_dir / name, tmp_path / name)
    path = tmp_path / "strategy.name=local__seed=0" / "probes.json"
    path.write_text(json.dumps(probes))
    res = CliRunner().invoke(report, [str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert {r["strategy"] for r in _table(res.output)} == {"local", "fedavg"}
    assert f"{path}: cannot read: {why}\n" in res.output, res.output
