"""Peak memory of a process tree, process by process, sampled from outside the run.

Every 0.2 s, until the process ROOT_PID exits (or is a zombie: exited, not yet reaped), reads the
PSS of ROOT_PID and all its descendants (``pss.sample``; a fedsim driver: Ray's daemons and actors
are its children and grandchildren) and keeps the sample with the largest total PSS. Prints that
sample per process (PSS, and its anonymous / file / shared-memory parts: a Ray actor's share of
the object store is ``shmem``) and per kind (those add up to the total), then each kind's own peak
over the run (reached at different moments: they do not add up). A separate process, so the run
it watches is not slowed (``scale.py``'s own sampler runs in the driver). Linux only.

    python benchmarks/scale.py --sizes 10000 --rounds 10 --skip-breakdown & python benchmarks/pss_tree.py $!
"""

from __future__ import annotations

import argparse
import os
import time

import _cli  # benchmarks/ is on sys.path when run as a script
import pss

MIB = 2**20


def running_pid(text: str) -> int:
    """The pid of a running process (an integer >= 0 with an entry in /proc)."""
    pid = _cli.index(text)
    if not os.path.exists(f"/proc/{pid}"):
        raise argparse.ArgumentTypeError(f"no process {pid} (is this Linux, and is the run still going?)")
    return pid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = _cli.parser(__doc__)
    ap.add_argument("root_pid", metavar="ROOT_PID", type=running_pid,
                    help="the pid of the running process whose tree to watch (e.g. $! after starting the run with &)")
    return ap.parse_args(argv)


def watch(root: int, interval: float = 0.2, proc: str = pss.PROC) -> pss.Peak:
    """Sample ``root``'s tree every ``interval`` seconds while ``root`` runs."""
    peak = pss.Peak()
    while pss.alive(root, proc):
        peak.add(pss.sample(root, proc))
        time.sleep(interval)
    return peak


def report(peak: pss.Peak) -> str:
    """The peak sample per process and per kind (MiB), and each kind's own peak, labelled."""
    rows = sorted(peak.at_peak, key=lambda p: -p.pss)
    out = [f"peak PSS {peak.total / MIB:.0f} MiB over {len(rows)} processes; each at that sample (MiB):",
           f"  {'PSS':>8}  {'anon':>7}  {'file':>6}  {'shmem':>7}  kind (pid)"]
    out += [f"  {p.pss / MIB:8.1f}  {p.anon / MIB:7.1f}  {p.file / MIB:6.1f}  {p.shmem / MIB:7.1f}  "
            f"{p.kind} (pid {p.pid})" for p in rows]
    kinds = sorted(peak.by_kind().items(), key=lambda x: -x[1])
    out.append("by kind at that sample (MiB, sums to the peak): " + ", ".join(f"{k} {v / MIB:.0f}" for k, v in kinds))
    out.append("each kind's own peak over the run (MiB, at different moments: not additive): " + ", ".join(
        f"{k} {v / MIB:.0f}" for k, v in sorted(peak.own_max.items(), key=lambda x: -x[1])))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    print(report(watch(parse_args(argv).root_pid)))


if __name__ == "__main__":
    main()
