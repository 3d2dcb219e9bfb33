"""Plugins on Flower: packed by the person who exports the app or sets up a device, checked by hash.

A plugin is code, and no file fedsim reads runs code by itself (:mod:`fedsim.plugins`). On Flower
the grant comes from the people who build and launch:

* the server: ``fedsim flower export SCENARIO APP --plugin my_rules.py`` (or ``demo --plugin``)
  records each plugin's sha256 in the app's run config (key ``plugins``, JSON ``{path: sha256}``,
  :func:`record`); the ServerApp imports the file at that path only if its content still hashes so;
* a device: ``fedsim flower bundle DIR --plugin my_rules.py`` packs the file into the wheel the
  device installs (``fedsim/flower/packed/``, :data:`PACKED_DIR`), or ``fedsim flower client
  --plugin my_rules.py`` names a copy on the device (node config ``plugins``, paths joined by
  ``:``); the ClientApp imports the copy whose sha256 is the one the run config records
  (:func:`fedsim.plugins.load_copy` runs exactly the bytes it hashed).

Only the plugins the scenario lists are imported (a packed plugin it does not list never is); a
listed plugin with no recorded hash, or no granted copy of that hash, is refused in one line on
the server and on each node before any import (:func:`admit`). Plugins named as modules
(``my_pkg.rules``) are not packed: name the module's ``.py`` file.

Light on purpose (hashlib, json, pathlib): it runs on the device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedsim.flower.errors import BridgeError

KEY = "plugins"  # the run-config key (the record) and the node-config key (a device's granted copies)
PACKED_NAME = "packed"  # the bundle's packed plugins: fedsim/flower/packed/ of the installed wheel
PACKED_DIR = Path(__file__).resolve().parent / PACKED_NAME
SEPARATOR = ":"  # between the paths of node config 'plugins'


def file_sha256(path: str | Path) -> str:
    """The sha256 of the file ``path``, read in 1 MiB blocks (a plugin, a bundle's wheel)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _py_file(entry: str, what: str) -> Path:
    """The ``.py`` file of a plugin ``entry`` (normalised), or :class:`BridgeError`."""
    from fedsim import plugins

    try:
        norm = plugins.normalize(entry)
    except ValueError as e:
        raise BridgeError(f"{what}: {e}") from None
    if not plugins.is_path(norm):
        raise BridgeError(
            f"{what}: {entry}: the Flower bridge packs plugins as .py files only; name the module's .py file instead"
        )
    p = Path(norm)
    if not p.is_file():
        raise BridgeError(f"{what}: {norm}: no such file")
    return p


def record(entries: Iterable[str]) -> str:
    """The run config's ``plugins`` value for the granted ``entries``: JSON ``{path: sha256}``."""
    out = {}
    for e in entries:
        p = _py_file(e, "--plugin")
        out[str(p)] = file_sha256(p)
    return json.dumps(out, sort_keys=True) if out else ""


def read_record(run_config: Mapping[str, Any]) -> dict[str, str]:
    """The run config's ``plugins`` record (``{}`` when absent); :class:`BridgeError` if malformed."""
    text = run_config.get(KEY, "")
    if not text:
        return {}
    from fedsim._runs import json_value

    try:
        rec = json_value(text, f"run config {KEY!r}") if isinstance(text, str) else None
    except ValueError:  # CorruptFileError: not JSON, or nested past the recursion limit
        rec = None
    if not isinstance(rec, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in rec.items()
    ):
        raise BridgeError(
            f"run config {KEY!r}: expected JSON {{path: sha256}} as `fedsim flower export --plugin` "
            f"writes it, got {str(text)[:80]!r}"
        )
    return rec


def device_copies(node_config: Mapping[str, Any]) -> list[Path]:
    """A device's granted copies: the bundle's packed files, then node config ``plugins``."""
    packed = sorted(p for p in PACKED_DIR.glob("*.py") if p.name != "__init__.py") if PACKED_DIR.is_dir() else []
    named = [Path(x).expanduser() for x in str(node_config.get(KEY, "") or "").split(SEPARATOR) if x.strip()]
    return packed + named


def admit(listed: Iterable[Any], rec: Mapping[str, str], copies: Iterable[Path] | None, where: str) -> None:
    """Import the scenario's ``listed`` plugins that this process has not granted yet, each from a
    copy whose sha256 is the one ``rec`` records; all are checked before the first import.
    ``copies``: the device's granted copies (:func:`device_copies`); ``None`` on the server, where
    the copy is the file at the listed path itself. ``where`` starts each refusal."""
    from fedsim import plugins

    todo: list[tuple[str, Path, str]] = []
    offered: dict[str, Path] | None = None
    for e in listed or ():
        if not isinstance(e, str):
            continue  # the schema's message
        try:
            entry = plugins.normalize(e)
        except ValueError:
            continue  # the schema's message
        sha = rec.get(entry)
        if sha is None:
            if plugins.granted_by_user(entry):
                continue  # granted in this process (an in-process bridge), not packed: as fedsim run imports it
            raise BridgeError(
                f"{where}: plugins: {entry}: not granted: the Flower apps import a plugin only when it was packed "
                f"(a plugin is code); export the app with fedsim flower export --plugin {Path(entry).name} and give "
                "each device its copy (fedsim flower bundle --plugin, or fedsim flower client --plugin)"
            )
        if copies is None:
            p = _py_file(entry, f"{where}: plugins")
            if file_sha256(p) != sha:
                raise BridgeError(
                    f"{where}: plugins: {entry}: its content changed since the app was exported "
                    f"(sha256 {sha[:12]}… recorded); export the app again"
                )
            todo.append((entry, p, sha))
            continue
        if offered is None:
            offered = {}
            for c in copies:
                if c.is_file():
                    offered.setdefault(file_sha256(c), c)
        match = offered.get(sha)
        if match is None:
            have = ", ".join(f"{c.name} ({h[:12]}…)" for h, c in offered.items()) or "none"
            raise BridgeError(
                f"{where}: plugins: {Path(entry).name}: no granted copy with sha256 {sha[:12]}… on this device "
                f"(its copies: {have}); rebuild its bundle with fedsim flower bundle --plugin, or start it with "
                "fedsim flower client --plugin FILE"
            )
        todo.append((entry, match, sha))
    for entry, p, sha in todo:
        try:
            plugins.load_copy(entry, p, sha)
        except plugins.PluginError as e:
            raise BridgeError(f"{where}: {e}") from None
