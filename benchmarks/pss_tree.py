"""Peak memory of a process tree, process by process, sampled from outside the run.

Every 0.2 s, until the process ROOT_PID exits, reads ``/proc/PID/smaps_rollup`` of ROOT_PID and all
its descendants (a fedsim driver: Ray's daemons and actors are its children and grandchildren) and
keeps the sample with the largest total PSS. Prints that sample per process (PSS, and its
anonymous / file / shared-memory parts: a Ray actor's share of the object store is ``shmem``) and
each process's own peak. A separate process, so the run it watches is not slowed (``scale.py``'s
own sampler runs in the driver). Linux only.

    python benchmarks/scale.py --sizes 10000 --rounds 10 --skip-breakdown & python benchmarks/pss_tree.py $!
"""

from __future__ import annotations

import os
import sys
import time

KEYS = ("gcs_server", "raylet", "dashboard.py", "log_monitor.py", "monitor.py", "agent")


def _tree(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    s = f.read()
            except OSError:
                continue
            kids.setdefault(int(s[s.rfind(")") + 2 :].split()[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _label(pid: int, root: int) -> str:
    """``driver``, a Ray worker's title (``ray::PeerGroup.train``), or the daemon's script/binary."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = [c.decode(errors="replace") for c in f.read().split(b"\0")]
    except OSError:
        return "?"
    if cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    for part in cmd[:3]:
        for key in KEYS:
            if part.endswith(key):
                return key
    return os.path.basename(cmd[0])[:30]


def _rollup(pid: int) -> dict[str, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            lines = f.readlines()[1:]
    except OSError:
        return None
    return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in lines)}


def _root_pid(argv: list[str]) -> int:
    """The one argument, the pid of a running process; otherwise ``SystemExit`` with a one-line error."""
    if len(argv) != 1 or not argv[0].isdigit():
        raise SystemExit(f"usage: pss_tree.py ROOT_PID (the pid of a running process), got {' '.join(argv)!r}")
    if not os.path.exists(f"/proc/{argv[0]}"):
        raise SystemExit(f"pss_tree.py: no process {argv[0]} (is this Linux, and is the run still going?)")
    return int(argv[0])


def main(argv: list[str] | None = None) -> None:
    root = _root_pid(sys.argv[1:] if argv is None else argv)
    peak, peak_rows, own = 0, [], {}
    while os.path.exists(f"/proc/{root}"):
        rows = []
        for p in _tree(root):
            r = _rollup(p)
            if r is not None and "Pss" in r:
                lab = _label(p, root)
                rows.append((r["Pss"], p, lab, r))
                own[(p, lab)] = max(own.get((p, lab), 0), r["Pss"])
        if sum(x[0] for x in rows) > peak:
            peak, peak_rows = sum(x[0] for x in rows), rows
        time.sleep(0.2)
    mib = 2**20
    print(f"peak PSS {peak / mib:.0f} MiB over {len(peak_rows)} processes; each at that sample (MiB):")
    for pss, p, lab, r in sorted(peak_rows, key=lambda x: -x[0]):
        print(f"  {pss / mib:8.1f}  anon {r.get('Pss_Anon', 0) / mib:7.1f}  file {r.get('Pss_File', 0) / mib:6.1f}  "
              f"shmem {r.get('Pss_Shmem', 0) / mib:7.1f}  {lab} (pid {p})")
    print("each process's own peak (MiB): " + ", ".join(
        f"{lab}:{p} {v / mib:.0f}" for (p, lab), v in sorted(own.items(), key=lambda x: -x[1])))


if __name__ == "__main__":
    main()
