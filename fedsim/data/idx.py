"""MNIST, Fashion-MNIST and EMNIST-letters from their original IDX files (optionally gzipped) in a
local directory. Nothing here downloads anything; an empty, truncated, corrupt or foreign file
raises :class:`~fedsim.errors.CorruptFileError`, one line naming the file."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fedsim.data.arrays import Dataset
from fedsim.data.checks import _reason
from fedsim.errors import CorruptFileError


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it ends in ``.gz``; a bad gzip stream is a CorruptFileError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptFileError(f"{path}: not a valid gzip file ({_reason(e)})") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a directory, expected a data file") from None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the format MNIST, Fashion-MNIST and EMNIST are published in); an empty,
    truncated or foreign file raises :class:`CorruptFileError` naming it."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] == 0:
        what = "empty" if not raw else f"starts with {raw[:4].hex()}"
        raise CorruptFileError(f"{path}: not an unsigned-byte IDX file ({what}; expected 00 00 08 <ndim>)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated IDX header ({len(raw)} bytes, the header alone needs {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise CorruptFileError(
            f"{path}: the header declares shape {shape} ({expected} bytes), the file has {len(raw)} bytes "
            "(truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(root: Path, *names: str) -> Path:
    for n in names:
        for cand in (root / n, root / (n + ".gz")):
            if cand.exists():
                return cand
    raise FileNotFoundError(
        f"none of {', '.join(names)} (or .gz) in {root}; fedsim never downloads data: put the original files there"
    )


def _idx_pair(root: Path, prefix: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split, checked to be the same count."""
    ipath = _find(root, f"{prefix}{split}-images-idx3-ubyte", f"{prefix}{split}-images.idx3-ubyte")
    lpath = _find(root, f"{prefix}{split}-labels-idx1-ubyte", f"{prefix}{split}-labels.idx1-ubyte")
    x, y = read_idx(ipath), read_idx(lpath)
    if x.ndim != 3 or y.ndim != 1:
        bad = ipath if x.ndim != 3 else lpath
        raise CorruptFileError(f"{bad}: expected {'images [N, H, W]' if bad == ipath else 'labels [N]'}")
    if len(x) != len(y):
        raise CorruptFileError(f"{lpath}: {len(y)} labels for the {len(x)} images of {ipath}")
    return x, y.astype(np.int64)


def _idx_dataset(name: str, root: Path, prefix: str = "", transpose: bool = False, label_offset: int = 0) -> Dataset:
    (x, y), (xt, yt) = (_idx_pair(root, prefix, s) for s in ("train", "t10k" if not prefix else "test"))
    y, yt = y - label_offset, yt - label_offset
    if transpose:  # EMNIST images are stored transposed
        x, xt = x.transpose(0, 2, 1).copy(), xt.transpose(0, 2, 1).copy()
    return Dataset(name, x, y, xt, yt, num_classes=int(max(y.max(initial=0), yt.max(initial=0))) + 1)


def mnist(data_dir: Path) -> Dataset:
    """MNIST from its IDX files (train-images-idx3-ubyte[.gz], ..., t10k-labels-idx1-ubyte[.gz])."""
    return _idx_dataset("mnist", Path(data_dir) / "mnist" if (Path(data_dir) / "mnist").is_dir() else Path(data_dir))


def fashion_mnist(data_dir: Path) -> Dataset:
    """Fashion-MNIST from its IDX files (same names as MNIST's)."""
    d = Path(data_dir)
    return _idx_dataset("fashion_mnist", d / "fashion_mnist" if (d / "fashion_mnist").is_dir() else d)


def emnist_letters(data_dir: Path) -> Dataset:
    """EMNIST letters (26 classes, labels 1..26 mapped to 0..25) from the published IDX files
    ``emnist-letters-train-images-idx3-ubyte[.gz]`` etc."""
    d = Path(data_dir)
    d = d / "emnist" if (d / "emnist").is_dir() else d
    return _idx_dataset("emnist_letters", d, prefix="emnist-letters-", transpose=True, label_offset=1)
