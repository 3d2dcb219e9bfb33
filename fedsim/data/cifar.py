"""CIFAR-10/100 from the python pickle release in a local directory. Nothing here executes code
from a data file: the pickles go through a restricted unpickler (:class:`SafeUnpickler`: numpy
arrays, lists, bytes, str and numbers only); anything unusable raises
:class:`~fedsim.errors.CorruptFileError`, one line naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.arrays import Dataset
from fedsim.data.checks import _reason
from fedsim.errors import CorruptFileError


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
