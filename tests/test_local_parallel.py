"""In-process groups side by side (issue 19, ``engine.local_parallel``): the same numbers as one
after another, each group's scratch its own, results in the groups' order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from fedsim import heads
from fedsim.backend import LocalBackend
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.scenario import parse
from fedsim.simulation import Simulation

SCENARIOS = {
    # 3 groups of 4, 3 and 3 peers, SGD with momentum, a Byzantine forger
    "fedavg": {
        "peers.count": 10,
        "engine.num_actors": 3,
        "peers.byzantine_fraction": 0.2,
        "peers.attack.name": "sign_flip",
        "evaluation.per_peer": True,
    },
    # Bristle (CWR copies kept between rounds, its own scratch) on push gossip with padded shards:
    # groups of different sizes take different chunk and gathered-row shapes in their kept buffers
    "bristle": {
        "peers.count": 60,
        "engine.num_actors": 3,
        "partition.kind": "iid",
        "topology.kind": "push_gossip",
        "topology.fanout": 5,
        "strategy.name": "bristle",
        "training.lr": 0.5,
    },
    "federated": {"mode": "federated", "engine.num_actors": 3},
    # a whole model (fedsim.whole: torch.func per peer or vmap, BatchNorm-free MLP from scratch)
    "whole-vmap": {
        "peers.count": 6,
        "engine.num_actors": 3,
        "partition.kind": "iid",
        "topology.kind": "complete",
        "model": {"trainable": "all", "hidden": [16], "init": "scratch", "batching": "vmap"},
    },
    "whole-loop": {
        "peers.count": 6,
        "engine.num_actors": 3,
        "partition.kind": "iid",
        "topology.kind": "complete",
        "model": {"trainable": "all", "hidden": [16], "init": "scratch", "batching": "loop"},
    },
}


def _run(
    d: dict, workers: int, threads_seen: set[str] | None = None, monkeypatch=None
) -> tuple[list, dict, np.ndarray]:
    """Every round's metrics, the final state and heads of scenario ``d`` on ``LocalBackend(workers)``."""
    sc = parse(d)
    backend = LocalBackend(workers)
    if threads_seen is not None:
        from fedsim.whole import WholePeerGroup

        cls = WholePeerGroup if sc.model.whole else PeerGroup
        real = cls.train

        def spy(self, *a, **kw):
            threads_seen.add(threading.current_thread().name)
            return real(self, *a, **kw)

        monkeypatch.setattr(cls, "train", spy)
    try:
        sim = Simulation(sc, prepare(sc), backend)
        metrics = [sim.step(r).metrics for r in range(sc.rounds)]
        return metrics, sim.state(), sim.final_params()
    finally:
        backend.shutdown()


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_groups_side_by_side_give_the_same_bits_as_one_after_another(small_scenario, monkeypatch, kind):
    d = small_scenario(**{"rounds": 4, "evaluation.every": 1, **SCENARIOS[kind]})
    seq = _run(d, 1)
    seen: set[str] = set()
    par = _run(d, 3, seen, monkeypatch)
    assert len(seen) >= 2 and all(name.startswith("fedsim-group") for name in seen)  # really in the pool
    assert par[0] == seq[0]  # every round's metrics record, the per-peer accuracies in peer order included
    assert np.array_equal(par[2], seq[2])
    assert par[1].keys() == seq[1].keys()
    for part in ("groups", "server"):
        a, b = par[1][part], seq[1][part]
        if a is None:
            assert b is None
            continue
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), (part, k)
            else:
                assert a[k] == b[k], (part, k)


def test_each_thread_has_its_own_kept_buffers(monkeypatch):
    """Two groups' calls at once, of different shapes, interleaved: neither sees the other's
    buffer, and each gets its own back on its next call (a process-wide buffer would hand the
    first thread the second's, grown, storage)."""
    monkeypatch.setattr(heads, "_kept", heads.KeptBuffers())
    first, second = threading.Event(), threading.Event()
    ptrs: dict[str, list[int]] = {"a": [], "b": []}

    def a() -> None:
        buf = heads.kept_buffer(torch.empty(2, 3))
        buf.fill_(1.0)
        ptrs["a"].append(buf.data_ptr())
        first.set()
        second.wait(10)  # the other thread took (and grew) a buffer of the same slot meanwhile
        assert torch.equal(buf, torch.ones(2, 3))
        ptrs["a"].append(heads.kept_buffer(torch.empty(2, 3)).data_ptr())

    def b() -> None:
        first.wait(10)
        buf = heads.kept_buffer(torch.empty(50, 7))
        buf.fill_(2.0)
        ptrs["b"].append(buf.data_ptr())
        second.set()

    errors: list[BaseException] = []

    def run(fn) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(f,)) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert ptrs["a"][0] == ptrs["a"][1]  # the first thread's buffer, kept for it
    assert ptrs["b"][0] != ptrs["a"][0]
    assert heads.kept_buffers() == {}  # and this (the test's) thread has none


def test_results_come_back_in_the_order_the_calls_were_made():
    """A list of pending results is answered in the list's order, not in the order the calls
    finished: here the first group's call finishes last."""
    done = threading.Event()

    class Slow:
        def value(self, wait: bool = True) -> str:
            assert not wait or done.wait(10)
            return "first"

    class Fast:
        def value(self) -> str:
            done.set()
            return "second"

    backend = LocalBackend(2)
    try:
        slow, fast = backend.actor(Slow), backend.actor(Fast)
        backend.get([slow.value.remote(False), fast.value.remote()])  # (a method's first call runs alone)
        done.clear()
        assert backend.get([slow.value.remote(), fast.value.remote()]) == ["first", "second"]
    finally:
        backend.shutdown()


def test_an_actors_calls_run_in_order_and_pending_results_resolve_as_arguments():
    """As on Ray: one actor's calls one at a time in the order made, and a pending result passed
    as an argument is the result itself when the call runs."""

    class Counter:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def add(self, x: int) -> int:
            if x == 0:
                time.sleep(0.2)  # the first call ends last unless the next ones wait for it
            self.seen.append(x)
            return x

        def pair(self, x: int) -> tuple[int, int]:
            return x, -x

    backend = LocalBackend(2)
    try:
        c = backend.actor(Counter)
        refs = [c.add.remote(i) for i in range(20)]
        pos, neg = c.pair.options(num_returns=2).remote(c.add.remote(7))
        assert backend.get(refs) == list(range(20))
        assert backend.get([pos, neg]) == [7, -7]
        assert c._obj.seen == [*range(20), 7]
    finally:
        backend.shutdown()


def test_an_error_in_a_group_reaches_the_driver():
    class Broken:
        def train(self) -> None:
            raise ValueError("a peer has no training samples")

    backend = LocalBackend(2)
    try:
        ref = backend.actor(Broken).train.remote()
        with pytest.raises(ValueError, match="no training samples"):
            backend.get([ref])
    finally:
        backend.shutdown()


@pytest.mark.parametrize("workers", [0, -1, 1.5, True])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(ValueError, match="workers: expected an integer >= 1"):
        LocalBackend(workers)


def test_a_methods_first_call_runs_with_no_other_beside_it_and_later_ones_side_by_side():
    """Two groups' first training calls side by side raced oneMKL's choice of a vector-math kernel (one
    group's numbers off in the last bit in ~1 process of 8, docs/performance.md): the driver waits for
    the first call of each method, over all actors, before it makes another; then the calls run side
    by side (3 groups: the first alone, the other two together)."""
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    class Group:
        def work(self) -> None:
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            time.sleep(0.2)
            with lock:
                state["now"] -= 1

    backend = LocalBackend(2)
    try:
        groups = [backend.actor(Group) for _ in range(3)]
        pending = groups[0].work.remote()
        assert state["most"] == 1 and state["now"] == 0  # the method's first call: ended before remote() returned
        backend.get([pending, *(g.work.remote() for g in groups[1:])])
        assert state["most"] == 2  # the next ones side by side, the other actors' first calls included
    finally:
        backend.shutdown()
