"""``model.init: scratch`` draws the backbone's weights at random even when its builder sets them
itself (``weights_file=False``: a plugin that reads a file, like benchmarks/dl4j_backbone.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim import rng as crng
from fedsim.models.backbones import BACKBONES, BackboneSpec, register_backbone
from fedsim.models.trainable import ModelPlan, split


class _Loaded(nn.Module):
    """Builds with fixed "loaded" weights (0.5 everywhere) and frozen, as a file-reading plugin does."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.fill_(0.5)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(x).flatten(1)


class _Raw(nn.Module):
    """A parameter of its own and no reset_parameters(): its weights cannot be drawn again."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.w.sum()


@pytest.fixture(scope="module", autouse=True)
def _specs():
    register_backbone(BackboneSpec("test_loaded_cnn", "fixed weights", _Loaded, (1, 5, 5), weights_file=False))
    register_backbone(BackboneSpec("test_raw_param", "raw parameter", _Raw, (1, 5, 5), weights_file=False))
    yield
    BACKBONES.pop("test_loaded_cnn")
    BACKBONES.pop("test_raw_param")


def _plan(backbone: str, init: str, seed: int = 0, dim: int = 18) -> ModelPlan:
    return ModelPlan(backbone=backbone, trainable="all", k=1, hidden=(), init=init, exchange="params",
                     bias=False, seed=seed, dim=dim, num_classes=3)


def _conv(plan: ModelPlan) -> nn.Conv2d:
    return next(m for m in split(plan)[1].modules() if isinstance(m, nn.Conv2d))


def test_scratch_redraws_weights_a_builder_loaded() -> None:
    a, b, other = (_conv(_plan("test_loaded_cnn", "scratch", s)) for s in (0, 0, 1))
    assert not torch.all(a.weight == 0.5) and not torch.all(a.bias == 0.5)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)  # seeded
    assert not torch.equal(a.weight, other.weight)  # another seed, other weights
    assert a.weight.requires_grad  # trainable although the builder froze it


def test_pretrained_keeps_the_builders_weights() -> None:
    assert torch.all(_conv(_plan("test_loaded_cnn", "pretrained")).weight == 0.5)


def test_builtin_scratch_is_the_seeded_build() -> None:
    """Backbones with a weights file are built at random already: their scratch weights are unchanged."""
    plan = _plan("fmnist_cnn", "scratch", dim=576)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(crng.derive_seed(0, "model_init", 0))
        ref = BACKBONES["fmnist_cnn"].build()
    got = split(plan)[1]
    for (_, r), (_, g) in zip(ref.state_dict().items(), got.state_dict().items(), strict=False):
        assert torch.equal(r, g)


def test_scratch_refuses_a_module_it_cannot_redraw() -> None:
    with pytest.raises(ValueError, match="test_raw_param.*_Raw has no reset_parameters"):
        split(_plan("test_raw_param", "scratch", dim=25))
