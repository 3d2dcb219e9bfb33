"""Frozen-backbone features, computed once per (dataset, backbone) and cached on disk.

The cache key hashes the dataset's contents, the backbone's weights, its preprocessing and a
format version, so a changed backbone or dataset never reuses stale features. Files are written
atomically (temp file + rename) so concurrent runs never read a half-written cache, and read
with ``allow_pickle=False`` and checked against the dataset: an unusable cache file is
recomputed, never trusted or executed.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim import rundir
from fedsim.data.arrays import Dataset
from fedsim.data.datasets import load
from fedsim.models.backbones import extract_features, get_spec, load_backbone

FORMAT_VERSION = "1"


@dataclass(frozen=True)
class Features:
    """Features of a dataset under a frozen backbone."""

    x_train: np.ndarray  # float32 [N, d]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    key: str

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])


def cache_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim" / "features")


def cache_key(ds: Dataset, backbone: str, weights_fp: str) -> str:
    spec = get_spec(backbone)
    h = hashlib.sha256(
        "|".join(
            [
                FORMAT_VERSION,
                ds.fingerprint(),
                backbone,
                weights_fp,
                str(spec.input_shape),
                repr(spec.mean),
                repr(spec.std),
            ]
        ).encode()
    )
    return f"{ds.name.replace(':', '_').replace('/', '_')}-{backbone}-{h.hexdigest()[:16]}"


def _read_cache(path: Path, ds: Dataset, log=None) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(x_train, x_test)`` features at ``path``, or None when there is none or it is
    unusable. Read with ``allow_pickle=False`` (a planted cache file cannot run code); a
    truncated, corrupt or mismatched file (wrong row counts, not 2-D float32, non-finite values) is
    derived data: it is recomputed and replaced, never trusted."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            xtr, xte = z["x_train"], z["x_test"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, TypeError) as e:
        problem = f"unreadable ({' '.join(str(e).split())[:120]})"
    else:
        ok = all(
            a.dtype == np.float32 and a.ndim == 2 and len(a) == n and a.shape[1] == xtr.shape[1]
            for a, n in ((xtr, len(ds.y_train)), (xte, len(ds.y_test)))
        )
        if ok and np.isfinite(xtr).all() and np.isfinite(xte).all():
            return xtr, xte
        problem = "does not match the dataset (row counts, shape, dtype or non-finite values)"
    if log:
        log(f"feature cache {path} {problem}; recomputing it")
    return None


def features_for(ds: Dataset, backbone: str, directory: str | None = None, log=None) -> Features:
    """Features of ``ds`` under ``backbone``, from the cache or computed (and cached) now."""
    net, wfp = load_backbone(backbone)
    key = cache_key(ds, backbone, wfp)
    path = cache_dir(directory) / f"{key}.npz"
    cached = _read_cache(path, ds, log)
    if cached is not None:
        return Features(cached[0], ds.y_train, cached[1], ds.y_test, ds.num_classes, key)
    if log:
        log(f"computing {backbone} features of {ds.name} (once; cached at {path})")
    spec = get_spec(backbone)
    xtr, xte = extract_features(net, ds.x_train, spec), extract_features(net, ds.x_test, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rundir.atomic_file(path) as fh:
        np.savez(fh, x_train=xtr, x_test=xte)
    return Features(xtr, ds.y_train, xte, ds.y_test, ds.num_classes, key)


def load_features(
    dataset: str, backbone: str, data_dir: str | None = None, directory: str | None = None, log=None
) -> Features:
    return features_for(load(dataset, data_dir), backbone, directory, log)
