"""The ``flower-superlink`` / ``flower-supernode`` command lines the bridge starts (through
:mod:`fedsim.flower.launch`), and the ``--node-config`` string they take.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fedsim.flower.launch import MAX_REPLY_OPTION, POLL_OPTION, WARM_OPTION, launch_command
from fedsim.flower.processes import LOOPBACK


def superlink_command(*, host: str = "0.0.0.0", port: int = 8000, certs: dict[str, str | Path] | None = None,
                      insecure: bool = False, auth: bool = False, database: str | None = None,
                      max_reply_bytes: int | None = None) -> list[str]:
    """``flower-superlink`` for the bridge, started through :mod:`fedsim.flower.launch` (its own
    executables found without PATH; Control/Runtime APIs served to this machine only, Fleet API on
    ``host``): TLS (``certs`` = ca/cert/key paths) unless ``insecure``; ``auth`` enables SuperNode
    authentication (needs TLS). The app's code is fedsim's, installed beside Flower, so runtime
    dependency installation is off. ``max_reply_bytes``: the cap on one device reply (the
    launcher's default when None)."""
    if insecure == bool(certs):
        raise ValueError("give TLS certificates or insecure=True (for local tests only)")
    if auth and insecure:
        raise ValueError("SuperNode authentication needs TLS; drop --insecure")
    cmd = launch_command("superlink", ["--host", host, "--port", str(port),
                                       "--disable-runtime-dependency-installation"])
    if insecure:
        cmd.append("--insecure")
    else:
        assert certs is not None
        cmd += ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"]),
                "--ssl-keyfile", str(certs["key"])]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    if max_reply_bytes is not None:
        if max_reply_bytes <= 0:
            raise ValueError(f"max_reply_bytes must be positive, got {max_reply_bytes}")
        cmd += [MAX_REPLY_OPTION, str(int(max_reply_bytes))]
    return cmd


_CONFIG_KEY = re.compile(r"[A-Za-z0-9_.-]+")


def node_config_string(cfg: dict[str, Any], what: str = "node config") -> str:
    """``{"partition-id": 0, "data-dir": "/d"}`` → ``partition-id=0 data-dir="/d"`` (TOML values), as
    Flower's ``--node-config`` and ``--run-config`` take them (``what`` names which, in the error)."""
    parts = []
    for k, v in cfg.items():
        if not _CONFIG_KEY.fullmatch(str(k)):  # Flower's parser splits on spaces and '=': a part would be dropped
            raise ValueError(f"{what} key {str(k)!r}: only letters, digits, '_', '.' and '-' are supported")
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, int | float):
            val = repr(v)
        else:
            s = str(v)
            if '"' in s or " " in s and "'" in s:
                raise ValueError(f"{what} {k}: a value with quotes is not supported: {s!r}")
            val = json.dumps(s)
        parts.append(f"{k}={val}")
    return " ".join(parts)


def supernode_command(superlink: str, node_config: dict[str, Any], *, root_certificates: str | Path | None = None,
                      insecure: bool = False, private_key: str | Path | None = None, port: int | None = None,
                      host: str = LOOPBACK, max_retries: int | None = None,
                      max_wait_time: float | None = None, warm: bool = False,
                      poll_interval: float | None = None) -> list[str]:
    """``flower-supernode`` for one fedsim peer (through :mod:`fedsim.flower.launch`). ``port``: the
    node's local ClientApp API (each SuperNode on one machine needs its own); it stays on 127.0.0.1.
    ``warm``: one long-lived ClientApp process (:mod:`fedsim.flower.worker`) instead of one per
    message; ``poll_interval``: cap on the SuperNode's waits between polls (Flower's: 3 s)."""
    if insecure == bool(root_certificates):
        raise ValueError("give --root-certificates (the SuperLink's CA) or --insecure (local tests only)")
    if private_key and insecure:
        raise ValueError("SuperNode authentication needs TLS; drop --insecure")
    cmd = launch_command("supernode", ["--superlink", superlink, "--node-config", node_config_string(node_config),
                                       "--host", host])
    if port is not None:
        cmd += ["--port", str(port)]
    cmd += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
    if private_key:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    if warm:
        cmd.append(WARM_OPTION)
    if poll_interval is not None:
        cmd += [POLL_OPTION, str(poll_interval)]
    return cmd
