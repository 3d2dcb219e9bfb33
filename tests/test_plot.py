"""`fedsim plot`: figures of a tiny run and a tiny sweep are written (PNG + PDF, non-empty), probe
curves are drawn when probes.json holds records and skipped otherwise, and importing the CLI
modules does not import matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim.plot import plot, probe_records
from fedsim.sweep import execute_sweep, plan_sweep


def _scenario(tmp: Path) -> Path:
    sc = {
        "name": "tiny",
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "peers": {"count": 6},
        "topology": {"kind": "k_regular", "degree": 4},
        "rounds": 3,
        "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 2},
        "engine": {"backend": "local", "num_actors": 1},
    }
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plot")
    grid = {
        "strategy.name": ["fedavg", "median"],
        "peers.attack.name": ["none", "sign_flip", "alie"],  # none at fraction 0, the attacks at 0.2
        "peers.byzantine_fraction": [0.0, 0.2],
    }
    plan = plan_sweep(_scenario(tmp), grid, out=tmp / "sw", skip_invalid=True)  # no attack without Byzantine peers
    assert not execute_sweep(plan, local=True).failed
    return plan.out


def _check(files: list[Path]) -> None:
    for f in files:
        data = f.read_bytes()
        assert len(data) > 1000, f
        assert data.startswith(b"\x89PNG" if f.suffix == ".png" else b"%PDF"), f


def test_plot_tiny_run_png_and_pdf(sweep_dir, tmp_path) -> None:
    run = sweep_dir / "strategy.name=fedavg__peers.attack.name=alie__peers.byzantine_fraction=0.2"
    res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    files = [Path(x) for x in res.output.split()]
    names = {f.name for f in files}
    assert {"accuracy_vs_round.png", "accuracy_vs_round.pdf", "accuracy_vs_bytes.png", "accuracy_vs_bytes.pdf"} <= names
    _check(files)
    # default folder and --format
    res = CliRunner().invoke(plot, [str(run), "--format", "png"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["accuracy_vs_bytes.png", "accuracy_vs_round.png"]
    res = CliRunner().invoke(plot, [str(run), "--format", "gif"])
    assert res.exit_code != 0 and "choose from" in res.output


def test_plot_sweep_heatmaps(sweep_dir, tmp_path) -> None:
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    files = [Path(x) for x in res.output.split()]
    stems = {f.stem for f in files}
    assert stems == {
        "accuracy_vs_round",
        "accuracy_vs_bytes",
        "heatmap_strategy_x_attack",
        "heatmap_strategy_x_byzantine_fraction",
    }
    assert len(files) == 8
    _check(files)


CLONING = [
    {
        "queries": q,
        "k": k,
        "output": "full",
        "method": "least_squares",
        "agreement": a,
        "clone_accuracy": a - 0.01,
        "target_accuracy": 0.95,
    }
    for k in (10, 1)
    for q, a in ((5, 0.5), (50, 0.8), (500, 0.97))
]
UNLEARNING = {
    "before": {"forget_accuracy": 1.0, "retain_accuracy": 0.98, "test_accuracy": 0.9, "mia_advantage": 0.6},
    "after": {"forget_accuracy": 0.6, "retain_accuracy": 0.95, "test_accuracy": 0.88, "mia_advantage": 0.2},
    "retrained": {"forget_accuracy": 0.62, "retain_accuracy": 0.97, "test_accuracy": 0.9, "mia_advantage": 0.15},
    "trace": {
        "forget_accuracy": [1.0, 0.9, 0.6],
        "reference_accuracy": [0.9, 0.9, 0.88],
        "forget_loss": [0.01, 0.5, 2.0],
        "reference_loss": [0.4, 0.45, 0.5],
    },
}


def test_probe_records_formats() -> None:
    for obj in (CLONING, {"records": CLONING}, {"cloning": CLONING}, [{"kind": "cloning", "records": CLONING}]):
        assert len(probe_records(obj)["cloning"]) == 6
    found = probe_records({"probes": [{"kind": "unlearning", "records": [UNLEARNING]}, {"kind": "x", "records": [1]}]})
    assert found["unlearning"] == [UNLEARNING] and found["cloning"] == []


def test_plot_probes_and_skip_unknown(sweep_dir, tmp_path) -> None:
    run = sweep_dir / "strategy.name=median__peers.attack.name=none__peers.byzantine_fraction=0"
    probes = run / "probes.json"
    try:
        probes.write_text(
            json.dumps([{"kind": "cloning", "records": CLONING}, {"kind": "unlearning", "result": UNLEARNING}])
        )
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "a"), "--format", "png"])
        assert res.exit_code == 0, res.output
        files = [Path(x) for x in res.output.split()]
        assert {"probes_cloning.png", "probes_unlearning.png"} <= {f.name for f in files}
        _check(files)
        probes.write_text(json.dumps({"format": "not yet fixed", "values": [1, 2]}))
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "b"), "--format", "png"])
        assert res.exit_code == 0 and "no cloning or unlearning records" in res.output
        assert not list((tmp_path / "b").glob("probes_*"))
        probes.write_text("{broken")
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "c"), "--format", "png"])
        assert res.exit_code == 0 and "not readable JSON" in res.output
    finally:
        probes.unlink(missing_ok=True)


def test_cli_modules_do_not_import_matplotlib() -> None:
    code = "import sys, fedsim.plot, fedsim.report, fedsim.sweep; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
