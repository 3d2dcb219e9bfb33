"""The processes a local federation starts: finding Flower's executables (:func:`flower_exe`),
ports on this machine (:func:`free_port`, :func:`wait_port`) and stopping a process with every
process below it (:func:`stop_tree`: Flower detaches its SuperExec/app processes into sessions of
their own, so they are found by walking the process tree), with bounded timeouts everywhere.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"


class FederationError(RuntimeError):
    """A process did not start, a run failed or timed out; the message names the log file."""


def flower_exe(name: str) -> str:
    """``flower-superlink``, ``flower-supernode``, ``flwr`` of this environment (next to python)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FederationError(f"{name} not found: install Flower (`pip install -e \".[flower]\"` in the fedsim "
                              "checkout)")
    return found


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            what = " ".join(map(str, proc.args[:5]))
            raise FederationError(f"process {what} exited with {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: only the processes we started ourselves
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(d.name))
    return out


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def stop_tree(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` and every process below it (collected first: Flower detaches its
    SuperExec/app processes into sessions of their own), then SIGKILL what is left after ``timeout``."""
    if proc.poll() is not None and not descendants(proc.pid):
        return
    pids = [proc.pid, *descendants(proc.pid)]
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
