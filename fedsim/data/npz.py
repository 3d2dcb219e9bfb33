"""Your own data as an ``.npz`` file, read with ``allow_pickle=False`` (object arrays are refused);
anything unusable raises :class:`~fedsim.errors.CorruptFileError`, one line naming the file."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from fedsim.data.arrays import Dataset, _split
from fedsim.data.checks import _LABEL_MAP, _reason
from fedsim.errors import CorruptFileError


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


def _refuse_oversized(path: Path) -> None:
    """:class:`CorruptFileError` when the arrays of the .npz ``path`` would need more than this
    machine's memory, before any is read: numpy allocates the array a member's ``.npy`` header
    declares before reading its data, so a header claiming terabytes, or a small deflated file of
    zeros (a zip bomb), would exhaust memory before any error. Counts each member's declared size
    (its header's shape and dtype) or its uncompressed size in the zip, whichever is larger."""
    from fedsim.limits import machine_memory

    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            declared = 0
            if info.filename.endswith(".npy"):
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:  # 3.0 (a UTF-8 header, no public reader): its zip size below
                        shape, dtype = (), np.dtype("u1")
                    declared = math.prod(shape) * dtype.itemsize
            total += max(declared, info.file_size)
    if total > machine_memory():
        raise CorruptFileError(f"{path}: its arrays declare {total} bytes, more than this machine's memory "
                               "(corrupt, or not data fedsim can load)")


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
        if not zipfile.is_zipfile(path):  # refused before np.load reads a lone .npy whole
            with path.open("rb") as fh:
                lone = fh.read(6) == b"\x93NUMPY"
            what = "a single .npy array, expected an .npz archive of x/y arrays" if lone else "not a zip archive"
            raise CorruptFileError(f"{path}: {what}" if lone else f"{path}: not a readable .npz ({what})")
        _refuse_oversized(path)
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
