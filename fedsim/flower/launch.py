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
* **A reply-size cap (SuperLink).** :class:`ReplySizeCap` refuses (413) a Fleet push whose body
  exceeds ``--max-reply-bytes``, and the objects of one pushed message (a reply's arrays arrive
  as 5 MB objects) once their sum exceeds it — before Flower parses or stores them, so an
  oversized reply never reaches the ServerApp (it counts as a device that did not answer).
* **Latency (SuperNode).** ``--poll-interval S``: Flower's SuperNode waits a fixed 3 s before it
  asks the SuperLink again when there was no message (and 0.5 s between looks for the ClientApp's
  reply); the launcher caps those waits at ``S`` (:func:`cap_supernode_sleeps`). ``--warm``: the
  SuperNode runs with ``--isolation process`` and a :mod:`fedsim.flower.worker` beside it (a child
  process, restarted if it dies), so the ClientApp's imports and fedsim's set-up are paid once per
  node, not once per message.

Those are patches of Flower internals: before anything starts, :func:`check_flower` exits with one
line when the installed flwr is not the one they were written for (:mod:`fedsim.flower.compat`).
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
PUSH_PATHS = ("/v1/fleet/push-messages", "/v1/fleet/push-object")
MAX_REPLY_OPTION = "--max-reply-bytes"
POLL_OPTION = "--poll-interval"
WARM_OPTION = "--warm"
# Default cap on one reply: 8 MiB, ten times the largest head of fedsim's datasets and backbones
# (100 classes × 2048 features × float32 = 0.8 MB); a reply is one head plus a few metrics.
DEFAULT_MAX_REPLY_BYTES = 8 * 1024 * 1024
_SESSIONS_KEPT = 4096
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
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _send_json(send, 403, "the Control and Runtime APIs of this SuperLink are only served to "
                             "this machine (fedsim's closed control plane)")
            return
        await self.app(scope, receive, send)

    def _refused(self, scope: dict[str, Any]) -> bool:
        path = str(scope.get("path", ""))
        if not any(path == p or path.startswith(p + "/") for p in CONTROL_PLANE_PREFIXES):
            return False
        client = scope.get("client")
        return not is_local_peer(client[0] if client else None, self.bound)


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class ReplySizeCap:
    """ASGI middleware: a SuperNode's pushed reply is at most ``max_bytes`` in all (413 otherwise).

    Each push body is counted while it streams in (never buffered past the cap); the
    ``object_content`` of ``push-object`` requests is summed per (run, node, session) — one pushed
    message — so splitting a huge array into Flower's 5 MB objects does not get around the cap."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"{MAX_REPLY_OPTION} must be positive, got {max_bytes}")
        self.app = app
        self.max_bytes = int(max_bytes)
        self.sessions: dict[tuple[int, int, str], int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in PUSH_PATHS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, scope, f"{int(declared)} bytes")
            return
        body = bytearray()
        more = True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            more = bool(msg.get("more_body"))
            if len(body) > self.max_bytes:
                await self._refuse(send, scope, f"more than {self.max_bytes} bytes")
                return
        if scope["path"].endswith("push-object"):
            total = self._count_object(bytes(body))
            if total > self.max_bytes:
                await self._refuse(send, scope, f"{total} bytes of objects in one message")
                return
        await self.app(scope, _replay(bytes(body)), send)

    def _count_object(self, body: bytes) -> int:
        """The bytes pushed so far for this request's message, this object included (0 if the
        body is not a PushObjectRequest: Flower answers that itself)."""
        from flwr.proto.message_pb2 import PushObjectRequest

        req = PushObjectRequest()
        try:
            req.ParseFromString(body)
        except Exception:  # noqa: BLE001 - malformed: Flower's own parser rejects it
            return 0
        key = (int(req.run_id), int(req.node.node_id), str(req.session_id))
        total = self.sessions.pop(key, 0) + len(req.object_content)
        self.sessions[key] = total  # most recent last; the oldest sessions are forgotten
        while len(self.sessions) > _SESSIONS_KEPT:
            self.sessions.pop(next(iter(self.sessions)))
        return total

    async def _refuse(self, send: Any, scope: dict[str, Any], what: str) -> None:
        from flwr.common.logger import log

        client = scope.get("client") or ("?", 0)
        log(30, "fedsim: refused a reply from %s: %s over the cap of %d bytes (%s)", client[0], what,
            self.max_bytes, MAX_REPLY_OPTION)
        await _send_json(send, 413, f"reply larger than this SuperLink's cap of {self.max_bytes} bytes")


def _replay(body: bytes) -> Any:
    """An ASGI ``receive`` that hands ``body`` over once, then reports a disconnect."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _pop_option(args: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` / ``name=VALUE`` (a fedsim option Flower does not know) from ``args``."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if a.startswith(name + "="):
            del args[i]
            return a.split("=", 1)[1]
    return None


def _option(args: Sequence[str], name: str, default: str) -> str:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return default


def install_gate(bound: str, max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES) -> None:
    """Put :class:`ControlPlaneGate` and :class:`ReplySizeCap` outermost in the SuperLink's
    middleware, through Flower's extension hook (``flwr.superlink.extensions.get_middleware``,
    read when the app is built)."""
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    from fedsim.flower.compat import require

    require("superlink_middleware")
    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(ControlPlaneGate, bound=bound), Middleware(ReplySizeCap, max_bytes=max_reply_bytes),
                *original())

    extensions.get_middleware = get_middleware


class _CappedTime:
    """The ``time`` module, except that ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        import time

        self._time, self.cap = time, float(cap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._time, name)

    def sleep(self, seconds: float) -> None:
        self._time.sleep(min(float(seconds), self.cap))


def cap_supernode_sleeps(cap: float) -> None:
    """Cap the fixed waits of Flower's SuperNode loop (3 s between polls of the SuperLink when no
    message came, 0.5 s between looks for a reply) at ``cap`` seconds: they are module-level
    ``time.sleep`` calls in ``flwr.supernode.start_client_internal``, with no setting of their own."""
    from flwr.supernode import start_client_internal

    from fedsim.flower.compat import require

    require("supernode_sleeps")
    start_client_internal.time = _CappedTime(cap)  # type: ignore[assignment]


def start_worker(runtime_api_address: str, poll: float | None = None) -> Any:
    """Start :mod:`fedsim.flower.worker` for this SuperNode as a child process, and start it again
    whenever it exits (a crash of the app must not leave the node without a ClientApp); it exits
    with this process (``--parent-pid``). Returns the supervising thread."""
    import subprocess
    import threading
    import time

    cmd = [sys.executable, "-m", "fedsim.flower.worker", "--runtime-api-address", runtime_api_address,
           "--parent-pid", str(os.getpid())]
    if poll is not None:
        cmd += [POLL_OPTION, str(poll)]

    def supervise() -> None:
        from flwr.common.logger import log

        while True:
            rc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL).wait()
            log(30, "fedsim: the ClientApp worker exited with %s; starting it again", rc)
            time.sleep(1.0)

    t = threading.Thread(target=supervise, name="fedsim-clientapp-worker", daemon=True)
    t.start()
    return t


def patches_for(role: str, args: Sequence[str]) -> list[str]:
    """The patches of Flower internals (:data:`fedsim.flower.compat.PATCHES`) a ``role`` started
    with ``args`` applies here or in a process it starts: the SuperLink's middleware, and the
    ServerApp's pulls (the ServerApp runs on this machine, with this flwr); a SuperNode's poll cap
    and, with ``--warm``, the worker's copy of ``pull_task_input``."""
    if role == "superlink":
        return ["superlink_middleware", "bounded_object_pulls"]
    out = ["supernode_sleeps"] if _option(args, POLL_OPTION, "") else []
    return out + (["pull_task_input"] if WARM_OPTION in args else [])


def check_flower(role: str, args: Sequence[str]) -> None:
    """Exit with one line when the installed flwr is not the one those patches were written for."""
    from fedsim.flower.compat import FlowerInternalsError, require

    try:
        for patch in patches_for(role, args):
            require(patch)
    except FlowerInternalsError as e:
        sys.exit(f"fedsim: {e}")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m fedsim.flower.launch superlink|supernode [flower arguments]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ROLES:
        sys.exit(f"usage: python -m fedsim.flower.launch {{{'|'.join(ROLES)}}} [flower arguments]")
    role, args = argv[0], argv[1:]
    check_flower(role, args)
    os.environ.update(env_with_own_bin(dict(os.environ)))
    for k in LEGACY_GRPC_SWITCHES:
        os.environ.pop(k, None)
    if role == "superlink":
        cap = _pop_option(args, MAX_REPLY_OPTION)
        if cap is not None and (not cap.isdigit() or int(cap) == 0):
            sys.exit(f"{MAX_REPLY_OPTION}: expected a positive number of bytes, got {cap!r}")
        install_gate(_option(args, "--host", "0.0.0.0"), int(cap) if cap else DEFAULT_MAX_REPLY_BYTES)
        sys.argv = [str(Path(bin_dir()) / "flower-superlink"), *args]
        from flwr.superlink.cli import flower_superlink

        flower_superlink()
    else:
        poll = _pop_option(args, POLL_OPTION)
        try:
            poll_s = float(poll) if poll is not None else None
        except ValueError:
            poll_s = -1.0
        if poll_s is not None and not 0 < poll_s <= 60:
            sys.exit(f"{POLL_OPTION}: expected seconds in (0, 60], got {poll!r}")
        warm = WARM_OPTION in args
        if warm:
            args.remove(WARM_OPTION)
            if "--isolation" in args or any(a.startswith(("--isolation=", "--ssl-")) for a in args):
                sys.exit(f"{WARM_OPTION} sets --isolation process and serves the Runtime API on plain HTTP "
                         "(127.0.0.1): drop --isolation and the --ssl-* options")
            from flwr.supercore.constant import SUPERNODE_UVICORN_DEFAULT_PORT, UVICORN_DEFAULT_HOST

            host = _option(args, "--host", UVICORN_DEFAULT_HOST)
            port = _option(args, "--port", str(SUPERNODE_UVICORN_DEFAULT_PORT))
            args += ["--isolation", "process"]
            start_worker(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", poll_s)
        if poll_s is not None:
            cap_supernode_sleeps(poll_s)
        sys.argv = [str(Path(bin_dir()) / "flower-supernode"), *args]
        from flwr.supernode.cli import flower_supernode

        flower_supernode()


if __name__ == "__main__":
    main()
