"""`fedsim plot DIR` / `fedsim report DIR` read a run, a sweep or a folder of runs and sweeps (two
levels down at most, `runs/<name>`, `runs/<sweep>/<run>`); anything else is one line, nothing
written (`fedsim plot /tmp` once walked everything below it and wrote 778 figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim._runs import load_runs
from fedsim.plot import plot
from fedsim.report import report


def _run(d: Path, strategy: str = "fedavg") -> Path:
    d.mkdir(parents=True)
    (d / "scenario.yaml").write_text(yaml.safe_dump({"name": d.name, "strategy": {"name": strategy}}))
    (d / "metrics.jsonl").write_text(json.dumps({"round": 0, "accuracy_mean": 0.5}) + "\n")
    (d / "summary.json").write_text(json.dumps({"final_accuracy_mean": 0.5}))
    return d


def _sweep(d: Path, names: list[str], index: bool = True) -> Path:
    for n in names:
        _run(d / n)
    if index:
        (d / "sweep.json").write_text(json.dumps({"grid": {}, "runs": [{"dir": n} for n in names]}))
    return d


def _names(root: Path) -> list[str]:
    return sorted(str(r.path.relative_to(root)) for r in load_runs(root).runs)


def test_a_run_a_sweep_and_a_folder_of_them(tmp_path):
    runs = tmp_path / "runs"
    _run(runs / "one")
    _run(runs / "one" / "probes" / "retrain-without-0")  # a probe's retrain inside a run: not a run of runs/
    _sweep(runs / "sw", ["a", "b"])
    _sweep(runs / "seeds", ["s0", "s1"], index=False)  # runs made one by one into a folder
    (runs / "plots").mkdir()  # `fedsim plot runs` writes here
    (runs / ".hidden").mkdir()
    (runs / "started").mkdir()
    (runs / "started" / "scenario.yaml").write_text("name: started\n")  # a run folder with no round yet
    assert _names(runs) == ["one", "seeds/s0", "seeds/s1", "sw/a", "sw/b"]
    assert _names(runs / "sw") == ["a", "b"] and _names(runs / "one") == ["."]
    res = CliRunner().invoke(report, [str(runs)])
    assert res.exit_code == 0 and res.output.count("fedavg") >= 1, res.output


def test_load_runs_reads_a_sweeps_index_once(tmp_path, monkeypatch):
    """One source of truth: the ``sweep.json`` that lists a sweep's runs is the one whose grid
    orders them (:class:`fedsim._runs.RunSet`), read once; each sweep inside a folder of runs once too."""
    import fedsim._runs as runs_mod

    reads: list[Path] = []
    real = runs_mod.read_json  # the one reader of the JSON files of run and sweep folders
    monkeypatch.setattr(
        runs_mod,
        "read_json",
        lambda path: (reads.append(path) if path.name == "sweep.json" else None) or real(path),
    )
    sweep = _sweep(tmp_path / "runs" / "sw", ["a", "b"])
    rs = load_runs(sweep)
    assert reads == [sweep / "sweep.json"]
    assert rs.index == {"grid": {}, "runs": [{"dir": "a"}, {"dir": "b"}]} and len(rs.runs) == 2
    reads.clear()
    _run(tmp_path / "runs" / "one")
    assert _names(tmp_path / "runs") == ["one", "sw/a", "sw/b"]
    assert reads == [tmp_path / "runs" / "sweep.json", sweep / "sweep.json"]  # (none in a run folder)


@pytest.mark.parametrize("cmd", [report, plot])
def test_a_deep_tree_is_refused_not_walked(tmp_path, cmd):
    _run(tmp_path / "a" / "b" / "c" / "run")  # depth 4
    res = CliRunner().invoke(cmd, [str(tmp_path)])
    assert res.exit_code != 0
    line = res.output.strip()
    assert "\n" not in line and f"{tmp_path / 'a'} is neither a run nor a sweep" in line, line
    assert "expected a run (with metrics.jsonl), a sweep (with sweep.json) or a folder of runs and sweeps" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # nothing written (no plots/)


def test_a_folder_beside_runs_is_named(tmp_path):
    _run(tmp_path / "r")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "x.txt").write_text("")
    (tmp_path / "old").mkdir()
    with pytest.raises(FileNotFoundError, match=r"notes \(and 1 more\) is neither a run nor a sweep"):
        load_runs(tmp_path)


def test_an_empty_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directories found; expected a run"):
        load_runs(tmp_path)
