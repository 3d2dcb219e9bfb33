"""The PSS of a process tree, by kind of process, read from ``/proc`` (Linux): the one reader
behind ``scale.py``'s in-process ``MemorySampler`` and ``pss_tree.py``, which samples a run from
outside.

PSS (proportional set size) splits each shared page among the processes that map it, so the PSS
of a tree's processes sums to what the tree holds. A *kind* is ``driver`` (the root), a Ray
worker's class (``ray::PeerGroup``: its title up to the method, which changes while it runs), a
Ray daemon (``raylet``, ``gcs_server``, ...) or the program's name. A zombie (state ``Z``, exited
but not yet reaped) holds no memory and counts as gone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

PROC = "/proc"
DAEMONS = ("gcs_server", "raylet", "dashboard.py", "log_monitor.py", "monitor.py", "agent")


@dataclass(frozen=True)
class Proc:
    """One process of a sample; sizes in bytes (``/proc/PID/smaps_rollup``)."""

    pid: int
    kind: str
    pss: int
    rss: int
    anon: int  # Pss_Anon
    file: int  # Pss_File
    shmem: int  # Pss_Shmem: a Ray process's share of the object store

    @property
    def worker(self) -> bool:
        """The driver or a Ray worker (not one of Ray's daemons)."""
        return self.kind == "driver" or self.kind.startswith("ray::")


def _stat(pid: int | str, proc: str) -> tuple[str, int] | None:
    """``(state, parent pid)`` of a process, None once it is gone."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    fields = s[s.rfind(")") + 2 :].split()
    return fields[0], int(fields[1])


def alive(pid: int, proc: str = PROC) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie."""
    st = _stat(pid, proc)
    return st is not None and st[0] != "Z"


def tree(root: int, proc: str = PROC) -> list[int]:
    """``root`` and its live descendants (zombies left out)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir(proc):
        st = _stat(d, proc) if d.isdigit() else None
        if st is not None and st[0] != "Z":
            kids.setdefault(st[1], []).append(int(d))
    out, todo = [], [root] if alive(root, proc) else []
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def kind(pid: int, root: int, proc: str = PROC) -> str:
    """``driver``, ``ray::<Class>``, a Ray daemon's name, or the program's (see the module doc)."""
    if pid == root:
        return "driver"
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            cmd = [c.decode(errors="replace") for c in f.read().split(b"\0")]
    except OSError:
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0].split(".")[0]
    for part in cmd[:3]:
        for key in DAEMONS:
            if part.endswith(key):
                return key
    return os.path.basename(cmd[0])[:30] or "?"


def _rollup(pid: int, proc: str) -> dict[str, int] | None:
    try:
        with open(f"{proc}/{pid}/smaps_rollup") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def sample(root: int, proc: str = PROC) -> list[Proc]:
    """Every live process of ``root``'s tree whose memory could be read, with its kind."""
    out = []
    for p in tree(root, proc):
        r = _rollup(p, proc)
        if r is not None and "Pss" in r:
            out.append(Proc(p, kind(p, root, proc), r["Pss"], r.get("Rss", 0), r.get("Pss_Anon", 0),
                            r.get("Pss_File", 0), r.get("Pss_Shmem", 0)))
    return out


def by_kind(procs: list[Proc]) -> dict[str, int]:
    """PSS summed per kind: a partition of the sample's total."""
    out: dict[str, int] = {}
    for p in procs:
        out[p.kind] = out.get(p.kind, 0) + p.pss
    return out


@dataclass
class Peak:
    """The sample with the largest total PSS (``at_peak``: its processes, whose per-kind sums add up
    to ``total``) and, apart, each kind's own maximum over time (``own_max``), reached at different
    moments: those maxima do not add up to the total."""

    total: int = 0
    at_peak: list[Proc] = field(default_factory=list)
    own_max: dict[str, int] = field(default_factory=dict)

    def add(self, procs: list[Proc]) -> None:
        for k, v in by_kind(procs).items():
            self.own_max[k] = max(self.own_max.get(k, 0), v)
        total = sum(p.pss for p in procs)
        if total > self.total:
            self.total, self.at_peak = total, procs

    def by_kind(self) -> dict[str, int]:
        """PSS per kind at the moment of the total peak (sums to :attr:`total`)."""
        return by_kind(self.at_peak)
