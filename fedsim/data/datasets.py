"""Datasets by name: the :data:`DATASETS` table (each name's loader, and whether it is embedded:
runs offline without a data directory), :func:`load` (the loader, then
:func:`~fedsim.data.checks.check_dataset`) and :func:`dataset_info` (what validation needs, cached
while the files are unchanged). A plugin adds a dataset by adding a row to :data:`DATASETS`: a
loader taking the data directory and returning a :class:`~fedsim.data.arrays.Dataset`.

The loaders, one module each: the embedded datasets (:mod:`fedsim.data.bundled`), MNIST,
Fashion-MNIST and EMNIST from IDX files (:mod:`fedsim.data.idx`), CIFAR-10/100 through a restricted
unpickler (:mod:`fedsim.data.cifar`) and generic npz (:mod:`fedsim.data.npz`). Nothing downloads
anything, and nothing executes code from a data file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from fedsim.data.arrays import Dataset, DatasetInfo
from fedsim.data.bundled import fashion_mnist_embedded, mnist10k, sklearn_digits
from fedsim.data.checks import check_dataset
from fedsim.data.cifar import cifar10, cifar100
from fedsim.data.idx import emnist_letters, fashion_mnist, mnist
from fedsim.data.npz import npz

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
