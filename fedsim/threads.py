"""How many torch threads a run gets (docs/performance.md, "Thread policy").

One source of truth for the budgets a caller passes into a run explicitly
(:class:`fedsim.runner.Run`'s ``threads``): a sweep's Ray tasks divide the CPUs among the runs in
flight (:func:`task_threads`), and ``fedsim sweep --local`` uses the CPUs not busy with other
work (:func:`free_cpus`). Oversubscribed threads of the tiny batched GEMMs wait on each other:
two sweep tasks of two threads each on two cores ran a 12-run grid several times slower than
one thread each (docs/performance.md)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cpus(load: float | None = None, cpus: int | None = None) -> int:
    """The usable CPUs minus the 1-minute load average (``load``; default ``os.getloadavg()[0]``,
    0 where the OS has none), rounded, at least 1 and at most ``cpus`` (default :func:`usable_cpus`)."""
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    if load < 0:
        raise ValueError(f"load average must be >= 0, got {load}")
    return max(1, min(cpus, round(cpus - load)))


def task_threads(cpus: int, jobs: int | None) -> int:
    """Threads of each of ``jobs`` runs sharing ``cpus`` CPUs: ``cpus // jobs``, at least 1
    (``jobs`` None: one run per CPU, 1 thread each)."""
    if cpus < 1 or (jobs is not None and jobs < 1):
        raise ValueError(f"cpus and jobs must be >= 1, got cpus={cpus}, jobs={jobs}")
    return max(1, cpus // (jobs or cpus))
