"""Ray processes of this user left running by a Ray session that is gone from this machine, for the
warning :func:`fedsim.backend.init_ray` prints before it starts or joins a Ray (fedsim never stops
them: docs/performance.md, "Leftover Ray processes").

A Ray session's core on a machine is its GCS (``gcs_server``, on the head) and its raylet (every
node); every other Ray process (the autoscaler ``monitor.py``, ``dashboard.py``, ``log_monitor.py``,
the Ray Client server, the raylet's agents ``ray::DashboardAgent``/``ray::RuntimeEnvAgent``,
workers ``ray::...``) serves them. A session folder that processes still name while neither its
GCS nor its raylet runs here is *stale*: nothing of it on this machine can work. Seen: after
``kill -9`` of a ``ray start --head``'s GCS and raylet, its autoscaler monitor (83 MB) went on
retrying the dead GCS (over 20 minutes: it never gave up), the log monitor lived 2.5 minutes and
the agents 50 s; after a driver and its reaper were both SIGKILLed, the agents of fedsim's own Ray
outlive them by about 60 s (:mod:`fedsim.ray_reaper`).

A *Ray process* here: a process of this user whose title is ``ray::...``, whose program is
``raylet`` or ``gcs_server``, or that runs a ``.py`` file inside a ``ray`` package folder or
``-m ray....``; its session is the first ``.../session_<date>_<pid>`` folder its command line
names, else one its open files lie in (the agents name none on their command line). Linux only
(``/proc``); the scan stops at a deadline and says it did not finish (:class:`Scan`): a session whose
GCS or raylet was not reached yet is not known to be stale, so an unfinished scan reports nothing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from fedsim import ray_reaper

SCAN_TIMEOUT_S = 2.0
"""Seconds the scan of ``/proc`` may take before it stops with what it found."""
CONFIRM_S = 1.0
"""Seconds between the two scans a process must be found stale in: a session being stopped right
now (its GCS and raylet gone a moment before its other processes) is not reported."""
CORE = ("gcs_server", "raylet")
"""The processes that make a session live on this machine."""

_SESSION = re.compile(r"/(?:[^\s=:,;]*/)?session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+(?![\w-])")


@dataclass(frozen=True)
class RayProcess:
    pid: int
    name: str  # ray::DashboardAgent, raylet, gcs_server, autoscaler/_private/monitor.py, ...
    session: str  # the session folder it names
    rss: int  # resident memory, bytes


@dataclass(frozen=True)
class Scan:
    """What :func:`ray_processes` found, and whether it read every process (False: it stopped at its
    deadline, and a session's GCS or raylet may be among those it did not read)."""

    procs: list[RayProcess]
    complete: bool


def ray_name(argv: list[str]) -> str | None:
    """What the process of command line ``argv`` is, if it is a Ray process (else None)."""
    if not argv:
        return None
    if argv[0].startswith("ray::"):
        return argv[0].split()[0]
    if os.path.basename(argv[0]) in CORE:
        return os.path.basename(argv[0])
    for i, a in enumerate(argv[1:], 1):
        if a.endswith(".py") and "/ray/" in a:
            return a.rsplit("/ray/", 1)[1]
        if argv[i - 1] == "-m" and (a == "ray" or a.startswith("ray.")):
            return a
    return None


def session_of(texts: list[str]) -> str | None:
    """The first Ray session folder that ``texts`` (arguments, open files' paths) name."""
    for t in texts:
        m = _SESSION.search(t)
        if m:
            return m.group(0)
    return None


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ray_processes(deadline: float, skip: frozenset[int] = frozenset()) -> Scan:
    """This user's Ray processes and their sessions, other than ``skip``; those read before
    ``deadline`` (``time.monotonic()``), with whether every process was read by then."""
    uid, found = os.getuid(), []
    for name in os.listdir("/proc"):
        if time.monotonic() > deadline:
            return Scan(found, complete=False)
        if not name.isdigit() or int(name) in skip:
            continue
        pid = int(name)
        try:
            if os.stat(f"/proc/{name}").st_uid != uid:
                continue
            argv = ray_reaper.cmdline(pid)
            kind = ray_name(argv)
            if kind is None:
                continue
            session = session_of(argv) or session_of(ray_reaper.open_files(pid))
            if session is not None:
                found.append(RayProcess(pid, kind, session, _rss(pid)))
        except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
            continue
    return Scan(found, complete=True)


def stale_sessions(procs: list[RayProcess]) -> dict[str, list[RayProcess]]:
    """Session folder → its processes, for the sessions none of whose processes is a :data:`CORE` one."""
    live = {p.session for p in procs if p.name in CORE}
    out: dict[str, list[RayProcess]] = {}
    for p in procs:
        if p.session not in live:
            out.setdefault(p.session, []).append(p)
    return out


def leftover_message(stale: dict[str, list[RayProcess]]) -> str | None:
    """One line naming the stale sessions' processes, their memory and how to end them; None if none."""
    if not stale:
        return None
    procs = [p for ps in stale.values() for p in ps]
    parts = [
        f"{session}: " + ", ".join(f"{p.name} (pid {p.pid}, {p.rss / 2**20:.0f} MB)" for p in ps)
        for session, ps in sorted(stale.items())
    ]
    return (
        f"{len(procs)} process{'es' if len(procs) > 1 else ''} of Ray sessions whose GCS and raylet are gone "
        f"still run{'s' if len(procs) == 1 else ''} ({sum(p.rss for p in procs) / 2**20:.0f} MB): "
        + "; ".join(parts)
        + f"; fedsim leaves them (not its own); `kill -9 {' '.join(str(p.pid) for p in procs)}` ends them"
    )


def leftovers(timeout: float = SCAN_TIMEOUT_S, confirm: float = CONFIRM_S) -> str | None:
    """:func:`leftover_message` for this machine now (None where there is no ``/proc``): the
    processes found stale by two scans ``confirm`` seconds apart (the second only when the first
    found some), each scan stopping after ``timeout`` seconds; None too when either scan stopped
    before it read every process (a live session's GCS or raylet may be among those not read: no
    verdict without both complete scans)."""
    if not ray_reaper.supported():
        return None
    me = frozenset({os.getpid()})
    scan = ray_processes(time.monotonic() + timeout, me)
    first = stale_sessions(scan.procs) if scan.complete else {}
    if not first:
        return None
    time.sleep(confirm)
    seen = {p.pid for ps in first.values() for p in ps}
    scan = ray_processes(time.monotonic() + timeout, me)  # all of them: a core one may be back
    if not scan.complete:
        return None
    again = stale_sessions(scan.procs)
    both = {s: kept for s, ps in again.items() if (kept := [p for p in ps if p.pid in seen])}
    return leftover_message(both)
