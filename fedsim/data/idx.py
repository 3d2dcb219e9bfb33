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


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the format MNIST, Fashion-MNIST and EMNIST are published in), gunzipped
    when it ends in ``.gz``; an empty, truncated, corrupt or foreign file raises
    :class:`CorruptFileError` naming it. The header is read first and no more than the bytes it
    declares after it, so a gzip bomb (gigabytes of zeros in a small ``.gz``) or a huge file is
    refused without being read whole, and a header declaring more than this machine's memory
    before anything is allocated."""
    from fedsim.limits import machine_memory

    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or head[3] == 0:
                what = "empty" if not head else f"starts with {head[:4].hex()}"
                raise CorruptFileError(f"{path}: not an unsigned-byte IDX file ({what}; expected 00 00 08 <ndim>)")
            header = 4 + 4 * head[3]
            dims = fh.read(header - 4)
            if len(dims) < header - 4:
                raise CorruptFileError(
                    f"{path}: truncated IDX header ({4 + len(dims)} bytes, the header alone needs {header})")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(head[3]))
            size = math.prod(shape)
            if size > machine_memory():
                raise CorruptFileError(f"{path}: the header declares shape {shape} ({size} bytes), more than this "
                                       "machine's memory (corrupt, or not an IDX file)")
            body = fh.read(size + 1)  # one byte more: a file longer than its header says is refused too
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise CorruptFileError(f"{path}: not a valid gzip file ({_reason(e)})") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a directory, expected a data file") from None
    if len(body) != size:
        has = f"{header + len(body)} bytes (truncated or corrupt)" if len(body) < size else "more (corrupt)"
        raise CorruptFileError(f"{path}: the header declares shape {shape} ({header + size} bytes), the file has {has}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


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
