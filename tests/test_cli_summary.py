"""`fedsim run`'s summary table: after a resume the rounds' time covers every session and the wall
time only this command, and the rows say which (a resumed run printed 5.36 s "time in rounds"
beside 3.26 s "wall time")."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner

import fedsim
from fedsim.callbacks import StopAfter
from fedsim.cli import main


def _scenario(tmp_path: Path) -> Path:
    d = {
        "name": "t",
        "rounds": 3,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "peers": {"count": 6},
        "topology": {"kind": "ring"},
        "training": {"local_steps": 1, "batch_size": 8},
        "engine": {"backend": "local", "num_actors": 1},
        "checkpoint": {"every": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_a_resumed_runs_table_says_which_time_covers_what(tmp_path: Path) -> None:
    fresh = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q", "--out", str(tmp_path / "fresh")])
    assert fresh.exit_code == 0, fresh.output
    assert "time in rounds  " in fresh.stdout and "(all sessions)" not in fresh.stdout
    assert "(this command)" not in fresh.stdout

    stopped = fedsim.run(_scenario(tmp_path), out=tmp_path / "r", callbacks=[StopAfter(1)])
    assert not stopped.complete
    res = CliRunner().invoke(main, ["run", "--resume", str(stopped.dir), "-q"])
    assert res.exit_code == 0, res.output
    assert "time in rounds (all sessions)" in res.stdout and "wall time (this command)" in res.stdout


def test_a_quiet_run_still_prints_its_resource_warning_to_stderr(tmp_path: Path) -> None:
    """``-q`` silences the progress bar, not the run's ``warning:`` lines (the run's ``log`` was a
    no-op under ``-q``, so a batch above every shard ran without a word)."""
    d = yaml.safe_load(_scenario(tmp_path).read_text())
    d["rounds"], d["training"]["batch_size"] = 1, 4096  # above every peer's shard: fedsim.limits.batch_warning
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    res = CliRunner().invoke(main, ["run", str(tmp_path / "s.yaml"), "-q", "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stderr.splitlines() if x.startswith("warning: ")]
    assert len(lines) == 1 and "batch_size" in lines[0], res.stderr
    assert "warning: " not in res.stdout
