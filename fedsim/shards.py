"""The hosted peers' data shards: the classes each peer holds (:func:`held_classes`) and a block of
rows zero-padded to one length (:func:`pad_rows`, small shards and stacked validation splits)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def held_classes(y: np.ndarray, train_idx: list[np.ndarray], val_idx: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Bool ``[n, C]``: the classes present in each peer's training and validation samples (Bristle's
    "familiar" classes, and the class sets peers compare when they connect)."""
    out = np.zeros((len(train_idx), num_classes), dtype=bool)
    for i, (t, v) in enumerate(zip(train_idx, val_idx, strict=True)):
        out[i, np.asarray(y)[np.concatenate([t, v]).astype(np.int64)]] = True
    return out


def pad_rows(x: Tensor, y: Tensor, offsets: np.ndarray, sizes: np.ndarray, m: int) -> tuple[Tensor, Tensor, Tensor]:
    """Rows ``offsets[i] : offsets[i] + sizes[i]`` of ``x [n, d]``, ``y [n]`` as zero-padded blocks
    ``[g, m, d]``, ``[g, m]`` (``m >= max(sizes)``), and the bool mask ``[g, m]`` of the real rows."""
    pos = np.arange(m)[None, :]
    real = pos < sizes[:, None]
    mask = torch.from_numpy(real)
    at = torch.from_numpy(np.where(real, offsets[:, None] + pos, 0))
    return x[at].mul_(mask[..., None]), y[at].mul_(mask), mask  # in place: no second padded copy
