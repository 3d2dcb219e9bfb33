"""The networks of the shipped backbones (torch); :mod:`fedsim.models.backbones` names them
and imports this module only when a backbone is built."""

from __future__ import annotations

import torch
from torch import nn


def cnn(in_ch: int, side: int, pool: int = 3, bn: bool = False) -> nn.Sequential:
    """Two conv blocks, then average-pooled to ``64 × pool × pool`` features (576 for pool=3).
    ``bn``: a ``BatchNorm2d`` after each convolution (Conv → BN → ReLU → pool, the ResNet order; the
    ``fmnist_bn_cnn`` backbone), for BatchNorm in whole-model training (``docs/whole-model.md``).

    The features are the conv trunk's, not a late fully-connected layer's: conv features transfer
    across datasets far better (frozen Fashion-MNIST trunk → MNIST linear probe: 97.7% with the
    pooled conv features vs 92.3% with a 128-unit fc layer, measured when choosing this design).
    """
    def norm(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c)] if bn else []

    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 5, padding=2),
        *norm(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        *norm(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(pool),
        nn.Flatten(),
        FeatureScale(64 * pool * pool),
    )


class FeatureScale(nn.Module):
    """Fixed affine map set after pretraining: ``(h − μ) / σ / √d`` with μ, σ the per-feature mean
    and std on the source dataset (like a BatchNorm frozen in eval mode). Features then have
    norm ≈ 1 and roughly isotropic scale, so plain SGD on the head converges quickly and one
    learning rate suits every task."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) * self.scale

    def fit(self, feats: torch.Tensor) -> None:
        """Set shift/scale from raw features of the source dataset."""
        self.shift.copy_(feats.mean(0))
        self.scale.copy_(1.0 / ((feats.std(0) + 1e-3) * feats.shape[1] ** 0.5))
