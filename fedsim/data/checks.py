"""What makes data unusable, said in one line naming the file: :func:`check_dataset` (the checks
every loaded dataset passes), the advice on mapping labels to ``0..C-1`` and ``_reason``, an
exception as a short reason for a :class:`~fedsim.errors.CorruptFileError`."""

from __future__ import annotations

import numpy as np

from fedsim.data.arrays import Dataset
from fedsim.errors import CorruptFileError


def _reason(e: BaseException) -> str:
    """An exception as a short one-line reason."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"


_LABEL_MAP = (
    "e.g. names, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True), then "
    "y_train, y_test = codes[:len(y_train)], codes[len(y_train):] (names[i] is class i)"
)


def check_dataset(ds: Dataset, where: str) -> Dataset:
    """Refuse data a run cannot use, one line naming ``where`` (the file or folder): counts of
    inputs and labels differ, an empty training set, inputs that are not numbers or not finite,
    train and test inputs of different shapes, or labels that are not exactly ``0..C-1`` (labels
    ``1..10`` would otherwise silently become 11 classes, one never seen)."""
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if len(x) != len(y):
            raise CorruptFileError(f"{where}: {len(x)} {split} inputs but {len(y)} {split} labels")
        if x.dtype.kind not in "biuf":
            raise CorruptFileError(f"{where}: {split} inputs must be numbers, got dtype {x.dtype}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise CorruptFileError(f"{where}: {split} inputs hold NaN or infinite values")
    if len(ds.y_train) == 0 or ds.x_train.ndim < 2:
        raise CorruptFileError(f"{where}: no training samples (inputs of shape {ds.x_train.shape})")
    if ds.x_test.shape[1:] != ds.x_train.shape[1:]:
        raise CorruptFileError(f"{where}: train inputs {ds.x_train.shape[1:]} and test inputs {ds.x_test.shape[1:]}")
    present = np.union1d(ds.y_train, ds.y_test)
    c = ds.num_classes
    if present[0] < 0 or present[-1] != c - 1 or len(present) != c:
        missing = np.setdiff1d(np.arange(max(c, 0)), present)[:5].tolist()
        k = len(present)
        shifted = bool((present == np.arange(1, k + 1)).all())
        raise CorruptFileError(
            f"{where}: labels must be the classes 0..C-1, each used at least once; found {k} distinct values "
            f"{int(present[0])}..{int(present[-1])}"
            + (f", never {missing}" if missing and not shifted else "")
            + (f"; they are 1..{k}: save y - 1 instead" if shifted else f"; map them to 0..{k - 1} before saving, "
               f"{_LABEL_MAP}")
        )
    return ds
