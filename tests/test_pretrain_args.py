"""`fedsim pretrain` refuses what cannot train, or cannot be saved, in one line and before any
data is loaded: `--epochs 0` used to evaluate and save an untrained network over the shipped
weights, and an unwritable `--out` failed only after minutes of training."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedsim.cli import main


@pytest.fixture
def no_training(monkeypatch):
    """Loading the source data is the first costly step: reaching it prints ``Error: LOADED``."""

    def load(*a, **k):
        raise ValueError("LOADED")

    monkeypatch.setattr("fedsim.models.pretrain.load", load)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--epochs", "0"], "Error: --epochs: must be an integer >= 1, got 0"),
        (["--batch-size", "0"], "Error: --batch-size: must be an integer >= 1, got 0"),
        (["--lr", "0"], "Error: --lr: must be a finite number > 0, got 0.0"),
        (["--lr", "nan"], "Error: --lr: must be a finite number > 0, got nan"),
    ],
)
def test_bad_training_settings_are_one_line_before_any_work(
    args: list[str], expected: str, tmp_path: Path, no_training
) -> None:
    out = tmp_path / "w.pt"
    res = CliRunner().invoke(main, ["pretrain", "--out", str(out), *args])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip() == expected
    assert not out.exists()


def test_an_unwritable_out_is_one_line_before_any_work(tmp_path: Path, no_training) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = CliRunner().invoke(main, ["pretrain", "--out", str(blocker / "w.pt")])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert "\n" not in line and line.startswith(f"Error: --out {blocker / 'w.pt'}: cannot write there"), line


def test_an_out_that_is_a_directory_is_refused(tmp_path: Path, no_training) -> None:
    res = CliRunner().invoke(main, ["pretrain", "--out", str(tmp_path)])
    assert res.exit_code != 0
    assert "LOADED" not in res.stderr and "is a directory" in res.stderr.splitlines()[-1], res.stderr


def test_a_writable_out_leaves_no_probe_file(tmp_path: Path, no_training) -> None:
    res = CliRunner().invoke(main, ["pretrain", "--out", str(tmp_path / "sub" / "w.pt")])
    assert res.stderr.strip() == "Error: LOADED"  # the checks passed and training began
    assert list((tmp_path / "sub").iterdir()) == []
