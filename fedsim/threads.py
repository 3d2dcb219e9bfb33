"""How many torch threads a run gets (docs/performance.md, "Thread policy").

One source of truth for the CPUs this process may use (:func:`usable_cpus`: the runner, the
memory and CPU checks of :mod:`fedsim.limits`), for each peer group's threads
(:func:`group_threads`) and for the budgets a caller passes into a run explicitly
(:class:`fedsim.runner.Run`'s ``threads``): a sweep's Ray tasks divide the CPUs among the runs in
flight (:func:`task_threads`), and ``fedsim sweep --local`` uses the CPUs not busy with other
work (:func:`free_cpus`). Oversubscribed threads of the tiny batched GEMMs wait on each other:
two sweep tasks of two threads each on two cores ran a 12-run grid several times slower than
one thread each (docs/performance.md)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fedsim.schema import Scenario


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


def group_count(sc: Scenario) -> int:
    """Peer groups a run starts: ``engine.num_actors``, at most one per peer."""
    return min(sc.engine.num_actors, sc.peers.count)


def check_count(name: str, value: Any) -> int:
    """``value`` where it is an integer >= 1 (a thread or worker count), else a one-line
    ``ValueError`` naming ``name`` (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


def _total_threads(sc: Scenario, budget: int | None) -> int:
    """Threads of the whole run in-process, or of each actor on Ray (the caller's ``budget``, else
    ``engine.cpus_per_actor``; in-process ``num_actors × cpus_per_actor``, at most :func:`usable_cpus`)."""
    if budget is not None:
        return check_count("threads", budget)
    threads = sc.engine.cpus_per_actor
    if sc.engine.backend == "local":
        threads = min(threads * sc.engine.num_actors, usable_cpus())
    return max(1, int(threads))


def local_workers(sc: Scenario, budget: int | None = None) -> int:
    """In-process groups that run side by side (``engine.backend: local``; :class:`fedsim.backend.LocalBackend`'s
    threads): one per group, at most one per thread of the run (:func:`group_threads`' total), where
    ``engine.local_parallel`` is ``auto`` and the groups train on the CPU; 1 (one after another, as
    before issue 19) on Ray, with ``off``, on another device, for a single group or a single thread."""
    e = sc.engine
    if e.backend != "local" or e.local_parallel == "off" or e.device != "cpu":
        return 1
    return max(1, min(group_count(sc), _total_threads(sc, budget)))


def group_threads(sc: Scenario, budget: int | None = None) -> int:
    """Torch threads of each peer group's process: ``budget`` where the caller gives one (a sweep
    task's share of the CPUs, :func:`task_threads`), else ``engine.cpus_per_actor``; in-process
    (``engine.backend: local``) the run's ``num_actors × cpus_per_actor``, at most the CPUs this
    process may use (:func:`usable_cpus`), divided among the groups that run side by side
    (:func:`local_workers`): 1 each where there are at least as many groups as threads (a tiny op
    then runs inline in its group's thread instead of waiting for a second, busy core), all of them
    where the groups run one after another. (Torch's thread count is per process: in-process every
    group sets the same.) A model section on the CPU (``sc.model.whole``, ``engine.device: cpu``)
    always gets 1 (:func:`fixed_threads`)."""
    total = _total_threads(sc, budget)  # (a bad budget is refused first)
    if fixed_threads(sc):
        return 1
    return max(1, total // local_workers(sc, budget))


def groups_at_once(sc: Scenario, phase: str) -> int:
    """Peer groups whose calls of ``phase`` (``"train"`` or ``"aggregate"``) run at the same time,
    what the memory estimate multiplies a group's transients by: on Ray every group; in-process the
    groups side by side (:func:`local_workers`) for the training, one for the aggregation (the
    decentralized groups' and the federated server's calls run alone, :func:`runs_alone`)."""
    if phase not in ("train", "aggregate"):
        raise ValueError(f"phase: expected 'train' or 'aggregate', got {phase!r}")
    if sc.engine.backend == "ray":
        return group_count(sc)
    return local_workers(sc) if phase == "train" else 1


def alone_threads(sc: Scenario, budget: int | None = None) -> int:
    """Torch threads of an in-process call that runs while no group's call does
    (:class:`fedsim.backend.LocalBackend`: every call of an actor class with ``runs_alone``, the
    federated server, whose aggregation starts once every group has trained; a method marked
    :func:`runs_alone`, the decentralized aggregation): the run's threads in all, what the groups use
    together (:func:`group_threads` × :func:`local_workers`), so such a call does not run on one
    thread while the other cores idle (N = 1,000: the server's aggregation took 17 ms on 1 thread
    against 11 ms on 2, docs/performance.md); 1 for a model section on the CPU (:func:`fixed_threads`)."""
    per_group = group_threads(sc, budget)  # (a bad budget is refused first, whole models too)
    if fixed_threads(sc):
        return 1
    return per_group * local_workers(sc, budget)


def ray_server_threads(sc: Scenario, per_group: int, single_host: bool) -> int:
    """Torch threads of the federated server's Ray actor, whose groups have ``per_group`` threads
    each (:func:`group_threads`). The server's calls never overlap a group's (its aggregation starts
    once every group has trained, and the groups wait for the global model it returns), so where
    every actor runs on this host (``single_host``: :meth:`fedsim.backend.RayBackend.single_host`)
    it takes the CPUs Ray holds for the groups, idle meanwhile: :func:`group_count` ×
    ``engine.cpus_per_actor`` whole CPUs, at least its own ``per_group`` and at most
    :func:`usable_cpus` — on one host the count the in-process server runs with
    (:func:`alone_threads`), so the two engines' servers compute with the same threads (N = 1,000:
    17.5 ms of aggregation on one thread against 12.9 on two, docs/performance.md). On a cluster of
    several nodes the groups' CPUs may be elsewhere: its own ``per_group``. 1 for a model section on
    the CPU (:func:`fixed_threads`)."""
    check_count("per_group", per_group)
    if fixed_threads(sc):
        return 1
    if not single_host:
        return per_group
    held = int(group_count(sc) * sc.engine.cpus_per_actor)  # (whole CPUs: 4 groups of 0.5 hold 2)
    return max(1, min(usable_cpus(), max(per_group, held)))


F = TypeVar("F", bound=Callable[..., Any])


def runs_alone(fn: F) -> F:
    """Mark a peer group's method whose in-process calls run one group after another, each on all
    the run's threads (:func:`alone_threads`), where the groups otherwise run side by side
    (:class:`fedsim.backend.LocalBackend`; on Ray the mark changes nothing): the decentralized
    aggregation. Side by side it was slower (Bristle, push gossip, one thread per group: 71-75 against
    60-61 ms a round at 100 peers, 250-257 against 227-229 at 1,000) and held two groups' working
    sets at once (+50 MiB at 10,000 peers, over the 1.5 GB goal); the training gains from it."""
    fn.runs_alone = True  # type: ignore[attr-defined]
    return fn


def fixed_threads(sc: Scenario) -> bool:
    """Whether the run's groups compute on exactly one torch thread, whatever the layout: a model
    section (``fedsim.whole``) on the CPU. Its kernels split reductions over the threads they get
    (oneDNN's convolution weight gradient, a linear layer's over a large batch), so their results
    differ at float rounding with the thread count, and the thread count otherwise depends on the
    layout (``num_actors × cpus_per_actor`` in-process, ``cpus_per_actor`` on Ray, a sweep's budget).
    On one thread a peer's numbers are the same in every layout (docs/whole-model.md, "Layout").
    The linear heads' batched products gave the same bits on 1 and 2 threads: they keep the policy above."""
    return bool(sc.model.whole) and sc.engine.device == "cpu"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, and back to what they were after."""
    import torch

    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
