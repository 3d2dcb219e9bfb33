"""The ``flwr`` CLI against a SuperLink's Control API: start a run, read its status and log,
register a SuperNode's public key (``flwr run | ls | log | supernode register``, JSON output).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.flower.commands import node_config_string
from fedsim.flower.processes import FederationError, flower_exe

CONNECTION = "fedsim"


def flwr_cli(args: Sequence[str], flwr_home: str | Path, timeout: float = 120.0,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "TERM": "dumb"}
    try:
        return subprocess.run([flower_exe("flwr"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise FederationError(f"`flwr {' '.join(args)}` did not finish in {timeout:.0f} s") from e


def _json_out(cp: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    text = cp.stdout.strip()
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if cp.returncode != 0 or not data.get("success", False):
        raise FederationError(f"{what} failed (exit {cp.returncode}): {cp.stdout.strip()} {cp.stderr.strip()}"[-3000:])
    return data


def start_run(app_dir: str | Path, flwr_home: str | Path, run_config: dict[str, Any] | None = None,
              connection: str = CONNECTION) -> str:
    """``flwr run APP_DIR CONNECTION``; returns the run id."""
    args = ["run", str(Path(app_dir).resolve()), *([connection] if connection else []), "--format", "json"]
    if run_config:
        args += ["--run-config", node_config_string(run_config, "run config")]
    return str(_json_out(flwr_cli(args, flwr_home), "flwr run")["run-id"])


def run_status(run_id: str, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    args = ["ls", *([connection] if connection else []), "--run-id", run_id, "--format", "json"]
    data = _json_out(flwr_cli(args, flwr_home), "flwr ls")
    runs = data.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_run(run_id: str, flwr_home: str | Path, timeout: float, connection: str = CONNECTION,
             poll: float = 2.0) -> str:
    """Poll until the run is ``finished:*``; returns that status (raises after ``timeout``)."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(run_id, flwr_home, connection)
        if status.startswith("finished"):
            return status
        time.sleep(poll)
    raise FederationError(f"run {run_id} not finished after {timeout:.0f} s (last status {status!r})")


def run_logs(run_id: str, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    """The ServerApp's log of a run (``flwr log RUN_ID --show``)."""
    cp = flwr_cli(["log", run_id, *([connection] if connection else []), "--show"], flwr_home, timeout=60)
    return cp.stdout


def register_node(public_key: str | Path, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    args = ["supernode", "register", str(public_key), *([connection] if connection else []), "--format", "json"]
    data = _json_out(flwr_cli(args, flwr_home), "flwr supernode register")
    return str(data.get("node-id"))
