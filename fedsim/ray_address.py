"""The Ray cluster a run is pointed at (``engine.address``, ``--address``): the address Ray itself
resolves it to, and a bounded check that a live cluster answers there, made before the run writes
anything and again by :func:`fedsim.backend.init_ray` before it connects.

Why: ``ray.init(address=...)`` retries a dead Global Control Store (GCS) for minutes. Seen: with
``/tmp/ray/ray_current_cluster`` left by a ``ray start --head`` whose GCS and raylet had been
killed, ``fedsim run --address auto`` printed "Failed to connect to GCS ... within 5 seconds" every
36 s for over 200 s (Ray 2.55: 20 tries of 5 s connect + 30 s cluster-ID wait + 1 s, about 12
minutes) and had already written the run folder. Now: a refused or silent address is a one-line
:class:`~fedsim.ray_lean.RayStartError` within :data:`CONNECT_TIMEOUT_S` (TCP), or within about
:data:`GCS_TIMEOUT_S` plus Ray's own 5 s connect wait (a port that accepts but where no GCS
answers), naming the address, where ``auto`` found it and that cluster's session folder.

The resolution is Ray's own (handed in by :mod:`fedsim.backend`, the only module that imports Ray):
``auto`` is ``RAY_ADDRESS`` when set, else
:func:`ray._private.services.canonicalize_bootstrap_address` (the GCS of a raylet running on this
machine, unless several run and the last ``ray start --head`` recorded an address in
``ray_current_cluster``; that address where none runs); a ``HOST:PORT`` is canonicalised the same
way (Ray replaces ``127.0.0.1`` by this host's address). A ``ray://`` (Ray Client) address gets the
TCP check only; other ``scheme://`` addresses are passed to Ray as given.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

from fedsim.ray_lean import RayStartError

CONNECT_TIMEOUT_S = 5.0
"""Seconds a TCP connection to the cluster's address may take before it counts as no cluster."""
GCS_TIMEOUT_S = 5.0
"""Seconds a GCS that accepted the connection has to answer (Ray's client adds its own 5 s connect wait)."""
RAY_ADDRESS_ENV = "RAY_ADDRESS"
"""What ``auto`` means when set (as in ``ray.init``)."""

START_HINT = "start one with `ray start --head`, or drop --address (engine.address) to let fedsim start its own Ray"

Canonicalize = Callable[[str], "str | None"]
"""Ray's resolution of an address (``auto`` or ``HOST:PORT``) to the ``HOST:PORT`` it connects to."""
GcsProbe = Callable[[str, float], None]
"""Raises unless a Ray GCS at ``HOST:PORT`` answers within the seconds given."""


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise RayStartError(f"Ray cluster address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def session_folder(address_file: Path, port: int) -> Path | None:
    """The session folder, beside ``address_file``, of the Ray head whose GCS port was ``port``
    (Ray writes it in ``session_*/gcs_server_port_<node id>``); None if none is found."""
    for f in sorted(address_file.parent.glob("session_*/gcs_server_port_*"), reverse=True):
        if f.parent.is_symlink():  # session_latest
            continue
        try:
            if f.read_text().strip() == str(port):
                return f.parent
        except OSError:
            continue
    return None


def resolve(address: str, canonicalize: Canonicalize, address_file: Path) -> tuple[str, str]:
    """``(the address Ray connects to, where it came from)`` for ``address`` as given; the second is
    empty for an address given in full. Raises :class:`RayStartError` where ``auto`` finds no cluster."""
    given, origin = address, ""
    if address == "auto" and os.environ.get(RAY_ADDRESS_ENV):
        address, origin = os.environ[RAY_ADDRESS_ENV], f"--address auto, from {RAY_ADDRESS_ENV}"
    if "://" in address:
        if address.startswith("ray://"):
            _host_port(address)
        return address, origin
    if address != "auto":
        _host_port(address)
    try:
        resolved = canonicalize(address)
    except (ConnectionError, ValueError) as e:  # Ray's "Could not find any running Ray instance", a bad address
        if given != "auto":
            raise RayStartError(f"Ray cluster address {given!r}: {(str(e).splitlines() or [''])[0]}") from None
        raise RayStartError(
            f"--address auto: no Ray cluster found (no {RAY_ADDRESS_ENV}, no address in {address_file}, "
            f"no raylet running on this machine); {START_HINT}"
        ) from None
    if resolved is None:  # "local": Ray would start a new one
        raise RayStartError(f"Ray cluster address {given!r} names no cluster; {START_HINT}")
    if address == "auto":
        try:
            recorded = address_file.read_text().strip()
        except OSError:
            recorded = ""
        try:
            same = bool(recorded) and canonicalize(recorded) == resolved
        except (ConnectionError, ValueError):
            same = False
        if same:
            origin = f"--address auto, recorded in {address_file} by the last `ray start --head`"
            folder = session_folder(address_file, _host_port(resolved)[1])
            if folder is not None:
                origin += f", session folder {folder}"
        else:
            origin = "--address auto, the GCS of a raylet running on this machine"
    elif not origin and resolved != address:  # Ray replaced the host (127.0.0.1 by this host's address)
        origin = f"{address} as Ray resolves it"
    return resolved, origin


def check_live(
    address: str,
    origin: str,
    probe: GcsProbe | None,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    gcs_timeout: float = GCS_TIMEOUT_S,
) -> None:
    """Raise :class:`RayStartError` unless ``address`` accepts a TCP connection within
    ``connect_timeout`` s and, for a GCS address with a ``probe``, a GCS answers within ``gcs_timeout`` s."""
    where = f"{address} ({origin})" if origin else address
    what = "Ray Client server" if address.startswith("ray://") else "Ray cluster"
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=connect_timeout).close()
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e)).lower()
        raise RayStartError(f"no live {what} at {where}: {reason}; {START_HINT}") from None
    if probe is None or address.startswith("ray://"):
        return
    try:
        probe(address, gcs_timeout)
    except Exception as e:  # noqa: BLE001 - Ray raises RpcError, RuntimeError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise RayStartError(
            f"no live {what} at {where}: the port accepts connections but no Ray GCS answered "
            f"within {gcs_timeout:g} s ({first}); {START_HINT}"
        ) from None


def live_address(address: str, canonicalize: Canonicalize, address_file: Path, probe: GcsProbe | None) -> str:
    """The address Ray will connect to for ``address`` (:func:`resolve`), checked live
    (:func:`check_live`); raises a one-line :class:`RayStartError` within seconds otherwise.
    Addresses with a scheme other than ``ray://`` are returned unchecked."""
    resolved, origin = resolve(address, canonicalize, address_file)
    if "://" in resolved and not resolved.startswith("ray://"):
        return resolved
    check_live(resolved, origin, probe)
    return resolved
