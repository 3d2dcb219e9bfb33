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


PLUGIN = '''
import torch
from torch import nn

from fedsim.models.backbones import BackboneSpec, register_backbone


class Projection(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) / 8)

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.w)


register_backbone(BackboneSpec("pretrain_test_fixed", "fixed", Projection, (1, 8, 8), weights_file=False))
register_backbone(BackboneSpec("pretrain_test_learnt", "learnt", Projection, (1, 8, 8)))
'''


@pytest.fixture
def plugin(tmp_path: Path):
    from fedsim.models.backbones import BACKBONES

    path = tmp_path / "my_backbones.py"
    path.write_text(PLUGIN)
    yield path
    for name in ("pretrain_test_fixed", "pretrain_test_learnt"):  # later tests list every backbone
        BACKBONES.pop(name, None)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--backbone", "pretrain_test_fixed", "--dataset", "sklearn_digits"], "sets weights_file=False"),
        (["--backbone", "pretrain_test_learnt"], "--dataset: backbone 'pretrain_test_learnt' names no source dataset"),
    ],
)
def test_a_plugin_backbone_that_cannot_be_pretrained_is_one_line(
    args: list[str], expected: str, plugin: Path, tmp_path: Path, no_training
) -> None:
    res = CliRunner().invoke(main, ["pretrain", "--plugin", str(plugin), "--out", str(tmp_path / "w.pt"), *args])
    assert res.exit_code == 1, res.output
    line = res.stderr.strip()
    assert "\n" not in line and expected in line, line


def test_a_plugin_backbone_is_pretrained_and_saved(plugin: Path, tmp_path: Path) -> None:
    """The plugin's network has no FeatureScale at its end (fedsim's CNNs do): saved as trained."""
    import torch

    out = tmp_path / "w.pt"
    res = CliRunner().invoke(main, ["pretrain", "--plugin", str(plugin), "--backbone", "pretrain_test_learnt",
                                    "--dataset", "sklearn_digits", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    state = torch.load(out, weights_only=True)
    assert set(state) == {"w"} and not torch.equal(state["w"], torch.randn(64, 8, generator=torch.Generator()
                                                                             .manual_seed(0)) / 8)
