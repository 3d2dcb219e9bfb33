"""Start Flower's SuperLink or SuperNode from *this* Python environment, with fedsim's defaults.

``python -m fedsim.flower.launch superlink|supernode [flower arguments]`` is what
``fedsim flower superlink|client`` and :class:`~fedsim.flower.local.LocalFederation` run. It does
two things Flower's own ``flower-superlink`` / ``flower-supernode`` scripts do not:

* **Executables without PATH tricks.** Flower starts ``flower-superexec``, ``flwr-serverapp`` and
  ``flwr-clientapp`` by bare name, so a SuperLink started by absolute path from a venv that is not
  on ``PATH`` (a systemd unit, cron, ``/opt/venv/bin/fedsim``) exits with
  ``FileNotFoundError: 'flower-superexec'`` and a SuperNode never runs a message. The launcher
  puts the interpreter's own ``bin`` directory first on ``PATH`` before Flower starts anything.
* **A closed control plane (SuperLink).** Flower 1.41 serves the Fleet API (``/v1/fleet``), the
  Control API (``/v1/control``: register SuperNode keys, start/stop runs, read logs) and the
  Runtime API (``/v1/runtime``: what the ServerApp talks to) on one HTTP port, with no flag to
  split them. :class:`ControlPlaneGate` answers 403 to every Control/Runtime request whose TCP
  peer is not this machine (a loopback address, or the address the SuperLink is bound to), before
  Flower reads the request. Devices keep the Fleet API; ``flwr run`` / ``flwr supernode register``
  work on the server itself (or through an SSH tunnel, which arrives from loopback).
  Flower's legacy gRPC Control/Fleet servers (``FLWR_INTERNAL_GRPC_*`` = 1, bound to 0.0.0.0) are
  switched off.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONTROL_PLANE_PREFIXES = ("/v1/control", "/v1/runtime")
LEGACY_GRPC_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
ROLES = ("superlink", "supernode")


def bin_dir() -> str:
    """The directory of this interpreter (a venv's ``bin``), where Flower's scripts are installed.
    Not resolved: a venv's ``python`` is a symlink to the base interpreter."""
    return str(Path(sys.executable).parent)


def env_with_own_bin(env: dict[str, str]) -> dict[str, str]:
    """``env`` with :func:`bin_dir` first on ``PATH`` (once), so Flower finds its own scripts."""
    own = bin_dir()
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != own]
    return env | {"PATH": os.pathsep.join([own, *rest])}


def launch_command(role: str, args: Sequence[str]) -> list[str]:
    """``[python, -m, fedsim.flower.launch, ROLE, *args]`` with this interpreter's absolute path."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return [sys.executable, "-m", "fedsim.flower.launch", role, *args]


def is_local_peer(host: str | None, bound: str | None = None) -> bool:
    """Whether a TCP peer address is this machine: a loopback address (also IPv4-mapped IPv6),
    or the specific address the SuperLink listens on (a connection to it from this machine
    arrives from it). Unparsable or missing → not local."""
    if not host:
        return False
    if bound and host == bound and bound not in ("0.0.0.0", "::"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class ControlPlaneGate:
    """ASGI middleware: Control and Runtime API requests from other machines get 403, unread."""

    def __init__(self, app: Any, bound: str | None = None) -> None:
        self.app = app
        self.bound = bound

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket") and self._refused(scope):
            body = json.dumps({"detail": "the Control and Runtime APIs of this SuperLink are only served to "
                               "this machine (fedsim's closed control plane)"}).encode()
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _refused(self, scope: dict[str, Any]) -> bool:
        path = str(scope.get("path", ""))
        if not any(path == p or path.startswith(p + "/") for p in CONTROL_PLANE_PREFIXES):
            return False
        client = scope.get("client")
        return not is_local_peer(client[0] if client else None, self.bound)


def _option(args: Sequence[str], name: str, default: str) -> str:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def install_gate(bound: str) -> None:
    """Put :class:`ControlPlaneGate` outermost in the SuperLink's middleware, through Flower's
    extension hook (``flwr.superlink.extensions.get_middleware``, read when the app is built)."""
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(ControlPlaneGate, bound=bound), *original())

    extensions.get_middleware = get_middleware


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m fedsim.flower.launch superlink|supernode [flower arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ROLES:
        sys.exit(f"usage: python -m fedsim.flower.launch {{{'|'.join(ROLES)}}} [flower arguments]")
    role, args = argv[0], argv[1:]
    os.environ.update(env_with_own_bin(dict(os.environ)))
    for k in LEGACY_GRPC_SWITCHES:
        os.environ.pop(k, None)
    sys.argv = [str(Path(bin_dir()) / f"flower-{role}"), *args]
    if role == "superlink":
        install_gate(_option(args, "--host", "0.0.0.0"))
        from flwr.superlink.cli import flower_superlink

        flower_superlink()
    else:
        from flwr.supernode.cli import flower_supernode

        flower_supernode()


if __name__ == "__main__":
    main()
