"""The reaper of the Ray fedsim starts on this machine: a tiny process that outlives the driver
and, when the driver dies without stopping its Ray (``kill -KILL``, a crash, ``os._exit``), kills
what is left of that Ray session (issue ray23).

Why: Ray (2.55, Linux) starts its head processes (GCS, raylet, log monitor, ...) with
``prctl(PR_SET_PDEATHSIG, SIGKILL)``: they die with the driver. The raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, ~180 MB together) are the raylet's children:
they see the raylet's pipe close, then report its death to the GCS, which died too, and wait out
that call's 60 s timeout (``ray._private.process_watcher.report_raylet_error_logs``) before they
exit, re-parented to init. Measured after ``kill -KILL`` of a ``fedsim run``: the agents lived
63 s more (the workers ~4 s); lean or not (``FEDSIM_RAY_LEAN``) alike. Ray's own reaper
(``ray_process_reaper.py``) is not started where the kernel can fate-share, i.e. on Linux, and it
would need the driver to lead its own process group. A clean stop (``ray.shutdown()``, Ray's own
``atexit``, SIGTERM, Ctrl-C, also during Ray's start) left nothing 30 s later.

How: :func:`start` (from :func:`fedsim.backend.init_ray`, before ``ray.init``, so a kill during
Ray's start-up is covered) runs this file as a script (``python -I -S``: the standard library only,
~10 MB) in a session of its own (a terminal's Ctrl-C or hang-up does not reach it), its stdin a
pipe from the driver; :func:`watch` writes the session folder on it once Ray runs. It waits for
that pipe to close. :func:`stop` (from :func:`fedsim.backend.shutdown_ray`, after Ray stopped
cleanly) writes ``done`` first: the reaper exits and touches nothing. Any other end of the pipe
is the driver's death (or a failed start): the reaper then SIGKILLs, in a few passes, every
process of this user in the driver's session (``getsid``), other than the driver, whose command
line or open files name that Ray session's folder (:func:`session_pids`); before the folder is
known, any ``<temp dir>/session_*_<driver pid>`` folder (Ray names a new head's session folder
``session_<date>_<pid>`` after the process that starts it). So it only ever touches the Ray that
this driver started itself: a cluster given by address starts no reaper, and every other Ray on
the machine has another session folder.

Linux only (it reads ``/proc``); elsewhere there is no ``PR_SET_PDEATHSIG`` and Ray starts its
own reaper, and :func:`start` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

DONE = b"done\n"
"""What :func:`stop` writes before closing the pipe after a clean stop: exit and reap nothing."""

PASSES = 5
"""Scans after the driver's death, ``PASS_GAP`` seconds apart, until one finds nothing (a process
the dying raylet started meanwhile is caught by the next)."""
PASS_GAP = 0.2

_reaper: subprocess.Popen | None = None  # the reaper of the Ray this process started, if any


def supported() -> bool:
    """Whether the reaper can work here: Linux's ``/proc`` with each process's open files."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


def start(temp_dir: str) -> None:
    """Start the reaper of the Ray this process is about to start with ``_temp_dir=temp_dir``
    (a reaper of an earlier Ray of this process, stopped without :func:`stop`, is stopped first)."""
    global _reaper
    stop()
    if not supported():
        return
    cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__), temp_dir, str(os.getpid()), str(os.getsid(0))]
    try:
        _reaper = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
            start_new_session=True,
        )
    except OSError as e:  # no process to spare: Ray still starts, as it would without fedsim
        warnings.warn(
            f"could not start the reaper of fedsim's Ray ({e.strerror or e}): if this process is killed, "
            "Ray's agents may outlive it by a minute",
            RuntimeWarning,
            stacklevel=2,
        )


def watch(session_dir: str) -> None:
    """Tell the reaper the session folder of the Ray that now runs."""
    _write(session_dir.encode() + b"\n")


def stop(clean: bool = True) -> None:
    """End the reaper: after a clean stop of its Ray (``clean``) it exits and touches nothing;
    otherwise (a failed start) it kills what that Ray left, and this waits for it to finish so a
    next start in this process is not touched."""
    global _reaper
    reaper, _reaper = _reaper, None
    if reaper is None:
        return
    if clean:
        _write(DONE, reaper)
    try:
        reaper.stdin.close()
    except OSError:
        pass
    try:
        reaper.wait(timeout=10 + PASSES * PASS_GAP)
    except subprocess.TimeoutExpired:  # a reaper stuck reading /proc: it only reads and kills; leave it
        pass


def _write(data: bytes, reaper: subprocess.Popen | None = None) -> None:
    reaper = reaper or _reaper
    if reaper is None:
        return
    try:
        reaper.stdin.write(data)
        reaper.stdin.flush()
    except OSError:  # the reaper is gone (killed by hand): nothing to tell
        pass


def names_session(text: str, sessions: list[str], temp_dirs: list[str], driver_pid: int) -> bool:
    """Whether ``text`` (a command-line argument or an open file's path) is, or lies in, one of the
    folders ``sessions`` or, while none is known, a ``session_*_<driver_pid>`` folder of one of
    ``temp_dirs``."""
    if sessions:
        return any((s.rstrip("/") + "/") in (text + "/") for s in sessions)
    for t in temp_dirs:
        head = t.rstrip("/") + "/session_"
        i = text.find(head)
        while i >= 0:
            folder = text[i + len(head) - len("session_") :].split("/", 1)[0]
            if folder.endswith(f"_{driver_pid}"):
                return True
            i = text.find(head, i + 1)
    return False


def cmdline(pid: int) -> list[str]:
    """``pid``'s command-line arguments (``OSError`` if it is gone)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def open_files(pid: int) -> list[str]:
    """The paths of ``pid``'s open files; none where they are not ours to read."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return []
    paths = []
    for fd in fds:
        try:
            paths.append(os.readlink(f"{fd_dir}/{fd}"))
        except OSError:  # closed meanwhile
            pass
    return paths


def _texts(pid: int) -> list[str]:
    """``pid``'s command-line arguments and the paths of its open files."""
    return cmdline(pid) + open_files(pid)


def session_pids(sessions: list[str], temp_dirs: list[str], driver_pid: int, sid: int) -> list[int]:
    """The processes of this user in session ``sid``, other than the driver and this process,
    that name the Ray session (:func:`names_session`)."""
    uid, skip = os.getuid(), {os.getpid(), driver_pid}
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{name}").st_uid != uid or os.getsid(pid) != sid:
                continue
            if any(names_session(t, sessions, temp_dirs, driver_pid) for t in _texts(pid)):
                found.append(pid)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def reap(sessions: list[str], temp_dirs: list[str], driver_pid: int, sid: int) -> list[int]:
    """SIGKILL the session's processes (:func:`session_pids`) until a scan finds none; the pids killed."""
    killed: list[int] = []
    for _ in range(PASSES):
        pids = session_pids(sessions, temp_dirs, driver_pid, sid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        time.sleep(PASS_GAP)
    return killed


def main(argv: list[str]) -> None:
    """``ray_reaper.py TEMP_DIR DRIVER_PID DRIVER_SID``: read session folders from stdin until it
    closes; then reap unless the last line was ``done``."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    temp_dir, driver_pid, sid = argv[1], int(argv[2]), int(argv[3])
    sessions, last = [], b""
    for line in sys.stdin.buffer:
        last = line
        if line != DONE and line.strip():
            sessions.append(line.decode(errors="replace").strip())
    if last == DONE:
        return
    temp_dirs = sorted({temp_dir, os.path.realpath(temp_dir)})
    reap(sessions + [os.path.realpath(s) for s in sessions if os.path.realpath(s) != s], temp_dirs, driver_pid, sid)


if __name__ == "__main__":
    main(sys.argv)
