"""``fedsim flower bundle OUT_DIR``: what a device needs to install this fedsim without the index
knowing fedsim.

Writes into ``OUT_DIR``::

    fedsim_lab-VERSION-py3-none-any.whl   this fedsim, built from its source tree (pip wheel --no-deps,
                                          offline: no build isolation, no index)
    constraints.txt                       the versions a device must match: flwr, torch, numpy and
                                          fedsim's other dependencies, as installed on this machine
    INSTALL.txt                           the device's install commands (quoted in docs/flower.md)
    SHA256SUMS                            of the wheel and constraints.txt

With ``--plugin my_rules.py`` (:func:`pack_plugins`) the wheel also holds each plugin file in
``fedsim/flower/packed/``: the device's grant, installed with the wheel; the ClientApp imports one
only when the run lists it with the same sha256 (:mod:`fedsim.flower.plugpack`). INSTALL.txt
names them with their hashes.

The server and the devices must run the same fedsim and flwr (the partition and the minibatch
streams are computed by fedsim's code on both sides), so the bundle pins them to this machine's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from fedsim.flower.plugpack import file_sha256
from fedsim.version import DISTRIBUTION, __version__

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 (the server side needs 3.11: flwr 1.41)
    import tomli as tomllib

# fedsim's own dependencies a device installs (pyproject's base dependencies + the client extra)
PINNED = ("torch", "numpy", "pydantic", "pyyaml", "click", "networkx")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt")
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class BundleError(RuntimeError):
    """The bundle cannot be built; the message says why, in one line."""


def source_root() -> Path | None:
    """The source tree this fedsim is imported from (a checkout or an editable install), or None
    when fedsim runs from an installed wheel."""
    import fedsim

    root = Path(fedsim.__file__).resolve().parent.parent
    return root if _is_source(root) else None


def _is_source(root: Path) -> bool:
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return project.get("project", {}).get("name") == DISTRIBUTION and (root / "fedsim" / "__init__.py").is_file()


def _packages(root: Path) -> list[str]:
    """The top-level packages the wheel holds (pyproject's ``packages.find`` include patterns)."""
    project = tomllib.loads((root / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    prefixes = [p.rstrip("*") for p in include]
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and (d / "__init__.py").is_file() and any(d.name == p for p in prefixes))


def pinned_versions() -> dict[str, str]:
    """``name → version`` a device must match: flwr (the bridge's pin) and :data:`PINNED` as
    installed here (a local label such as ``+cpu`` dropped: ``torch==2.13.0`` also matches the
    ``2.13.0+cpu`` build of PyTorch's CPU index)."""
    from fedsim.flower.project import FLWR_REQUIREMENT

    out = {"flwr": FLWR_REQUIREMENT.split("==", 1)[1]}
    for name in PINNED:
        try:
            out[name] = metadata.version(name).split("+", 1)[0]
        except metadata.PackageNotFoundError:
            raise BundleError(f"{name} is not installed in this environment ({sys.executable}); "
                              f"install fedsim's server side first") from None
    return out


def constraints_text(pins: dict[str, str]) -> str:
    lines = [f"# fedsim {__version__}: the versions of this server's environment; a device must match them",
             "# (Jetson with JetPack's own torch: leave the torch line out, see INSTALL.txt)"]
    return "\n".join([*lines, *(f"{k}=={v}" for k, v in sorted(pins.items()))]) + "\n"


INSTALL = """fedsim {version} for a device (a Flower SuperNode running fedsim's ClientApp)
=====================================================================

Copy this folder to the device, then in it (Python >= 3.11, 64-bit):

    python3 -m venv ~/fedsim && . ~/fedsim/bin/activate
    pip install torch=={torch} --index-url {cpu_index}        # CPU torch, first
    pip install "./{wheel}[client]" -c constraints.txt          # fedsim + flwr {flwr}
    ~/fedsim/bin/fedsim --version                               # fedsim, version {version}
    python -c "import fedsim.flower.client"                     # imports torch, flwr, fedsim only

The wheel is this fedsim; pip takes fedsim's dependencies (flwr, numpy, pydantic, ...) from the
index at the versions of constraints.txt, and never asks the index for fedsim ("fedsim" on PyPI
is an unrelated project; this one is "{dist}").

Supported:
  * Linux x86-64 and aarch64 (Raspberry Pi OS 64-bit Bookworm, Python 3.11): torch from PyTorch's
    CPU index as above. Do not take torch {torch} for aarch64 from PyPI: that wheel requires the
    CUDA 13 packages (cuda-toolkit, nvidia-cudnn-cu13, ...), gigabytes a Pi cannot use.
  * Jetson with Python >= 3.11 (JetPack 7 / Ubuntu 24.04 has 3.12; or an NVIDIA container with
    Python >= 3.11): keep JetPack's torch (fedsim accepts torch>=2.2,<2.15) and leave the torch line
    out of the constraints:
        grep -v '^torch==' constraints.txt > constraints-jetson.txt
        pip install "./{wheel}[client]" -c constraints-jetson.txt
Not supported:
  * 32-bit Raspberry Pi OS (armv7l): there are no torch wheels for it.
  * JetPack 6's Python 3.10: the newest flwr installable there is 1.30.0, and the bridge needs
    flwr {flwr} on the server and every device (flwr >= 1.31 requires Python >= 3.11).

Then start the device (docs/flower.md, "Run it"):
    fedsim flower client --superlink SERVER:8000 --partition-id I --num-partitions N --root-certificates ca.crt

Files: {wheel} (sha256 {sha}), constraints.txt, SHA256SUMS.
"""


def pack_plugins(files: Sequence[str | Path], src: Path) -> dict[str, str]:
    """Copy the plugin ``.py`` ``files`` into ``src``'s ``fedsim/flower/packed/`` (a package of the
    wheel); returns ``name → sha256``. Two files of one name are refused (:class:`BundleError`)."""
    from fedsim.flower import plugpack
    from fedsim.flower.common import BridgeError

    out: dict[str, str] = {}
    if not files:
        return out
    chosen: list[tuple[str, str, str]] = []  # (name, path, sha256): all checked before anything is written
    for f in files:
        try:
            path, sha = next(iter(json.loads(plugpack.record([str(f)])).items()))
        except BridgeError as e:
            raise BundleError(str(e)) from None
        name = Path(path).name
        if name == "__init__.py":
            raise BundleError(f"--plugin: {path}: a plugin cannot be named __init__.py; rename it")
        if name in (c[0] for c in chosen):
            raise BundleError(f"--plugin: two plugins named {name}; rename one")
        chosen.append((name, path, sha))
    dest = src / "fedsim" / "flower" / plugpack.PACKED_NAME
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "__init__.py").write_text('"""Plugins packed by fedsim flower bundle --plugin; imported only by hash."""\n')
    for name, path, sha in chosen:
        shutil.copyfile(path, dest / name)
        out[name] = sha
    return out


def build_wheel(root: Path, out_dir: Path, python: str = sys.executable, timeout: float = 600.0,
                plugins: Sequence[str | Path] = ()) -> tuple[Path, dict[str, str]]:
    """Build fedsim's wheel from the source tree ``root`` into ``out_dir``, offline. The sources are
    copied to a temporary directory first, so the build leaves nothing in ``root`` (no build/, no
    egg-info) and takes only the packages of the wheel (no caches, no runs/); ``plugins`` are packed
    into that copy (:func:`pack_plugins`). Returns the wheel and the packed ``name → sha256``."""
    with tempfile.TemporaryDirectory(prefix="fedsim-bundle-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        for pkg in _packages(root):
            shutil.copytree(root / pkg, src / pkg,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        packed = pack_plugins(plugins, src)
        cmd = [python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
               "-w", str(Path(tmp) / "dist"), str(src)]
        try:
            cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BundleError(f"building the wheel took more than {timeout:.0f} s") from None
        wheels = sorted((Path(tmp) / "dist").glob("*.whl"))
        if cp.returncode != 0 or len(wheels) != 1:
            tail = (cp.stderr.strip() or cp.stdout.strip()).splitlines()[-1:] or ["no wheel written"]
            raise BundleError(f"building the wheel failed (pip wheel exit {cp.returncode}): {tail[0]} "
                              "(it needs setuptools>=77 in this environment: pyproject.toml's SPDX license)")
        out_dir.mkdir(parents=True, exist_ok=True)
        dest = out_dir / wheels[0].name
        shutil.copy2(wheels[0], dest)
    return dest, packed


def build_bundle(out_dir: str | Path, source: str | Path | None = None, overwrite: bool = False,
                 plugins: Sequence[str | Path] = ()) -> dict[str, Path]:
    """Write the wheel (with the ``plugins`` packed), ``constraints.txt``, ``INSTALL.txt`` and
    ``SHA256SUMS`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    root = Path(source).expanduser().resolve() if source else source_root()
    if root is None:
        raise BundleError("fedsim runs from an installed wheel, not a source tree: pass --source DIR "
                          "(a fedsim checkout)")
    if not _is_source(root):
        raise BundleError(f"{root} is not a fedsim source tree (no pyproject.toml naming {DISTRIBUTION!r})")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BundleError(f"{out} is not empty; choose another folder or pass --overwrite")
    pins = pinned_versions()
    if out.exists() and overwrite:
        for old in [*out.glob("*.whl"), out / "constraints.txt", out / "INSTALL.txt", out / "SHA256SUMS"]:
            old.unlink(missing_ok=True)
    wheel, packed = build_wheel(root, out, plugins=plugins)
    constraints = out / "constraints.txt"
    constraints.write_text(constraints_text(pins))
    sha = file_sha256(wheel)
    (out / "SHA256SUMS").write_text(f"{sha}  {wheel.name}\n{file_sha256(constraints)}  constraints.txt\n")
    install = out / "INSTALL.txt"
    text = INSTALL.format(version=__version__, dist=DISTRIBUTION, wheel=wheel.name, torch=pins["torch"],
                          flwr=pins["flwr"], cpu_index=PYTORCH_CPU_INDEX, sha=sha)
    if packed:
        text += "Packed plugins (imported only when a run lists them with this sha256):\n" + "".join(
            f"  {n}  sha256 {h}\n" for n, h in sorted(packed.items()))
    install.write_text(text)
    return {"wheel": wheel, "constraints": constraints, "install": install, "sha256sums": out / "SHA256SUMS"}
