"""A dataset as arrays (:class:`Dataset`: images as uint8 ``[N, H, W]`` or ``[N, H, W, 3]``, or
float features ``[N, d]``, and int64 labels ``0..C-1``), what validation needs of one
(:class:`DatasetInfo`), and the fixed stratified train/test split of data that ships without one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def fingerprint(self) -> str:
        """Content hash: changes whenever any array changes (feature-cache key)."""
        h = hashlib.sha256(self.name.encode())
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetInfo:
    """What validation needs of a dataset, without computing features: the training labels (the
    partition is made from them alone), the test-set size, the number of classes and the shape
    and dtype of one input."""

    name: str
    y_train: np.ndarray  # int64 [N], read-only
    n_test: int
    num_classes: int
    sample_shape: tuple[int, ...]
    dtype: str  # numpy dtype string of the inputs, e.g. '|u1'

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    def sample(self) -> np.ndarray:
        """One all-zero input ``[1, *sample_shape]`` (the backbone's output size is read from it)."""
        return np.zeros((1, *self.sample_shape), dtype=np.dtype(self.dtype))


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Stratified, fixed (dataset-level, not scenario-level) train/test split."""
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test_idx.append(idx[: int(round(len(idx) * test_fraction))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], y[train].astype(np.int64), x[test], y[test].astype(np.int64)
