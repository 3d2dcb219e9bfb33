"""A fingerprint of the fedsim code that runs here: the sha256 of the ``.py`` sources of the
installed packages (:data:`PACKAGES`), so two machines can tell whether they compute the same.

``fedsim.__version__`` is the same on every commit, so it cannot tell an older checkout on a
device from the server's; the Flower bridge sends this fingerprint with every message and the
ClientApp refuses a server whose fingerprint differs from its own (:mod:`fedsim.flower.client`).

Only hashlib and pathlib: the device side imports it before anything else. Computed once per
process (about 180 files, 1.5 MB).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedsim.version import __version__

# the packages fedsim installs (pyproject.toml's [tool.setuptools.packages.find]): the peer's
# computation (fedsim), the rules (strategies), the attacks (attacks) and the models (fedlib)
PACKAGES = ("fedsim", "strategies", "attacks", "fedlib")
# left out: the plugins `fedsim flower bundle --plugin` packs into a device's wheel, each checked
# by its own sha256 (fedsim.flower.plugpack), so a bundle with plugins has the server's fingerprint
SKIP = ("fedsim/flower/packed/",)


def tree_fingerprint(roots: Mapping[str, Path], skip: Iterable[str] = SKIP) -> str:
    """The sha256 over every ``.py`` file below each ``roots[name]`` (a package's folder) that a
    wheel of it ships (:func:`shipped`), in sorted order of ``name/relative/path``, each entry its
    path, its length and its bytes; a missing root counts as its name alone. Paths starting with
    one of ``skip`` are left out."""
    skip = tuple(skip)
    h = hashlib.sha256()
    for name in sorted(roots):
        root = roots[name]
        files = [p for p in root.rglob("*.py") if shipped(root, p)] if root.is_dir() else []
        h.update(f"package {name} {'found' if root.is_dir() else 'missing'}\n".encode())
        for rel, p in sorted((f"{name}/{p.relative_to(root).as_posix()}", p) for p in files):
            if rel.startswith(skip):
                continue
            data = p.read_bytes()
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(data)
    return h.hexdigest()


def shipped(root: Path, path: Path) -> bool:
    """Whether the ``.py`` file ``path`` below the package folder ``root`` is in the package as
    setuptools' ``packages.find`` builds a wheel of it (the bundle a device installs): a regular
    file (a dangling link, an editor's ``.#name.py`` lock, is not), no part of its path hidden
    (``.ipynb_checkpoints/``) or ``__pycache__``, and every folder from ``root`` to it a package
    (an ``__init__.py``). A stray file the wheel leaves out would otherwise change the server's
    fingerprint and no device could match it."""
    parts = path.relative_to(root).parts
    if any(part.startswith(".") or part == "__pycache__" for part in parts) or not path.is_file():
        return False
    folder = root
    for part in parts[:-1]:
        folder = folder / part
        if not (folder / "__init__.py").is_file():
            return False
    return True


def package_roots(names: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """The folder each package is imported from here (as ``import`` finds it: ``PYTHONPATH``
    first), found without importing it; a package not installed maps to a path that does not exist."""
    out = {}
    for name in names:
        spec = importlib.util.find_spec(name)
        locs = list(spec.submodule_search_locations or []) if spec is not None else []
        out[name] = Path(locs[0]) if locs else Path("/nonexistent") / name
    return out


@functools.cache
def code_fingerprint() -> str:
    """This process's fedsim code: :func:`tree_fingerprint` of :func:`package_roots` (computed once)."""
    return tree_fingerprint(package_roots())


def describe(fingerprint: str, version: str = __version__) -> str:
    """``fedsim 0.1.0, code 1f0c2a3b4c5d`` (the fingerprint's first 12 hex digits)."""
    return f"fedsim {version}, code {str(fingerprint)[:12]}"
