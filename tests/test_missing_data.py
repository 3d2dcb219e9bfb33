"""A scenario whose dataset files are missing is refused before its run directory is made or
overwritten: `fedsim run --overwrite` used to empty an existing run's folder and only then fail
with `No such file or directory: /nonexistent/data_batch_1`, naming no field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fedsim
from fedsim.cli import main
from fedsim.scenario import ScenarioError


def _scenario(tmp_path: Path) -> Path:
    d = {"name": "t", "dataset": {"name": "cifar10", "data_dir": str(tmp_path / "absent")},
         "engine": {"backend": "local"}, "output": {"dir": str(tmp_path / "runs")}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_cli_run_with_missing_data_is_one_line_and_keeps_the_old_run(tmp_path: Path) -> None:
    old = tmp_path / "runs" / "t"
    old.mkdir(parents=True)
    (old / ".fedsim-run").write_text("")  # a run's folder, as fedsim.rundir marks it
    (old / "metrics.jsonl").write_text('{"round": 0}\n')
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q", "--overwrite"])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: {tmp_path / 's.yaml'}: dataset.data_dir: "), line
    assert (old / "metrics.jsonl").read_text() == '{"round": 0}\n'


def test_cli_run_with_missing_data_makes_no_folder(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 1 and "dataset.data_dir: " in res.stderr, res.output
    assert not (tmp_path / "runs").exists()


def test_api_run_with_missing_data_raises_before_any_folder(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="dataset.data_dir: "):
        fedsim.run(_scenario(tmp_path), out=tmp_path / "api-run")
    assert not (tmp_path / "api-run").exists()
    with pytest.raises(ScenarioError, match="dataset.data_dir: "):  # a mapping, too
        fedsim.run(yaml.safe_load(_scenario(tmp_path).read_text()), out=tmp_path / "api-run")


def test_local_sweep_with_missing_data_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """`fedsim sweep --set dataset.data_dir=/nonexistent` wrote sweep.json, then failed naming no field."""
    from fedsim.sweep import sweep

    path = _scenario(tmp_path)
    res = CliRunner().invoke(sweep, [str(path), "-g", "seed=0,1", "--set", f"dataset.data_dir={tmp_path / 'gone'}",
                                     "--local", "-q", "--out", str(tmp_path / "sw")])
    assert res.exit_code == 1, res.output
    line = res.output.strip()
    assert "\n" not in line and "dataset.data_dir: " in line and str(tmp_path / "gone") in line, line
    assert not (tmp_path / "sw").exists()


def test_cluster_sweep_leaves_the_data_to_the_runs_which_name_the_field(tmp_path: Path) -> None:
    """With --address the data may be only on the cluster: planning and the driver's feature warm-up
    do not need it; a run that cannot find it fails with one line naming dataset.data_dir."""
    from fedsim.sweep_execute import _warm_features, run_one
    from fedsim.sweep_plan import plan_sweep

    plan = plan_sweep(_scenario(tmp_path), {"seed": [0, 1]}, out=tmp_path / "sw")  # require_data=False
    _warm_features(plan)  # nothing raised here
    res = run_one(plan.runs[0].data, str(plan.runs[0].dir))
    assert res["status"] == "failed" and "\n" not in res["error"], res
    assert "dataset.data_dir: " in res["error"] and str(tmp_path / "absent") in res["error"], res["error"]
