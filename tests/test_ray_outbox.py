"""Round messages through the senders' shared-memory outboxes (fedsim.ray_outbox): the reader gets
the sender's exact bytes, read-only, in another process; a rewritten, foreign or unreachable
outbox is an error, never another round's values; on Ray the run is the object store's run byte
for byte, and a reader that cannot open an outbox leaves the run on the object store."""

from __future__ import annotations

import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from fedsim import ray_outbox
from fedsim.ray_outbox import Inbox, Outbox, OutboxError, Posted


def _messages() -> list[np.ndarray | tuple[np.ndarray, ...]]:
    g = np.random.default_rng(0)
    half = g.standard_normal((5, 7)).astype(np.float16)
    return [
        g.standard_normal((3, 11)).astype(np.float32),
        (g.standard_normal((4, 6)).astype(np.float16), g.standard_normal((4, 2)).astype(np.float16)),
        torch.from_numpy(g.standard_normal((2, 9)).astype(np.float32)).bfloat16().view(torch.uint16).numpy(),
        half[:, ::2],  # not contiguous: posted as its values
        np.zeros((0, 4), dtype=np.float32),
    ]


@pytest.fixture()
def box():
    """A fresh outbox of this process, closed after the test."""
    b = Outbox()
    yield b
    b.close()


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return not isinstance(b, tuple) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_posted_message_reads_back_exactly_and_read_only(box):
    inbox = Inbox()
    for r, m in enumerate(_messages()):
        p = box.post(m, r)
        got = inbox.read(p)
        assert _same(got, m), r
        for a in got if isinstance(got, tuple) else (got,):
            assert not a.flags.writeable
            if a.size:
                with pytest.raises(ValueError):
                    a[(0,) * a.ndim] = 1


def test_a_larger_message_grows_the_outbox_and_the_reader_remaps(box):
    inbox = Inbox()
    small = np.arange(10, dtype=np.float32)
    assert _same(inbox.read(box.post(small, 0)), small)
    big = np.arange(3 * ray_outbox.GROW // 4, dtype=np.float32)  # 3 MiB: the 1 MiB outbox grows
    p = box.post(big, 1)
    assert p.size >= big.nbytes + ray_outbox.HEADER and p.size > ray_outbox.GROW
    assert _same(inbox.read(p), big)
    again = np.full(7, 2.5, dtype=np.float32)  # smaller again: the same (grown) outbox
    q = box.post(again, 2)
    assert q.size == p.size and _same(inbox.read(q), again)


def test_a_rewritten_outbox_is_an_error_not_the_next_rounds_values(box):
    inbox = Inbox()
    p = box.post(np.ones(4, dtype=np.float32), 3)
    box.post(np.full(4, 9.0, dtype=np.float32), 4)  # the sender moved on before p was read
    with pytest.raises(OutboxError, match="holds round 4's message, not round 3's"):
        inbox.read(p)


def test_a_foreign_or_gone_outbox_is_an_error(box):
    inbox = Inbox()
    p = box.post(np.ones(4, dtype=np.float32), 0)
    other = Posted(p.pid, p.fd, b"x" * 16, p.size, 0, p.parts, False)  # another outbox's tag
    with pytest.raises(OutboxError, match="not the outbox its message names"):
        inbox.read(other)
    gone = Posted(p.pid, 10**6, p.tag, p.size, 0, p.parts, False)
    with pytest.raises(OutboxError, match="cannot open"):
        inbox.read(gone)
    assert not inbox.can_read([p, gone]) and inbox.can_read([p])


def _child(conn) -> None:
    box = Outbox()
    for r, m in enumerate(_messages()):
        conn.send(box.post(m, r))
        assert conn.recv() == "read"
    conn.send("done")
    conn.recv()  # (the outbox lives until the parent is done with it)


def test_another_process_reads_the_senders_bytes_in_place():
    ctx = mp.get_context("spawn")  # a process of its own, as a Ray worker is
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child,))
    proc.start()
    try:
        inbox = Inbox()
        for m in _messages():
            p = parent.recv()
            assert p.pid == proc.pid != os.getpid()
            assert _same(inbox.read(p), m)
            parent.send("read")
        assert parent.recv() == "done"
        parent.send("bye")
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    assert proc.exitcode == 0


class _Group:
    def __init__(self, value: float) -> None:
        self.value = value
        self.heard: list = []

    def train(self, round_: int, *_):
        return np.full((2, 3), self.value + round_, dtype=np.float32), np.zeros(2)

    def aggregate(self, round_: int, *params, **kw):
        self.heard.append((round_, params, kw))
        return {"dropped": 0}


def test_the_wrapped_class_posts_only_once_enabled_and_reads_what_it_is_sent():
    cls = ray_outbox.with_outbox(_Group)
    assert cls.__name__ == "_Group" and issubclass(cls, _Group)
    a, b = cls(1.0), cls(10.0)
    plain, _ = a.train(0)
    assert isinstance(plain, np.ndarray)  # before connect: the class as it was
    probes = [a.outbox_open(), b.outbox_open()]
    assert a.outbox_check(probes) and b.outbox_check(probes)
    a.outbox_enable()
    posted, losses = a.train(2)
    assert isinstance(posted, Posted) and posted.round == 2 and losses.shape == (2,)
    b.aggregate(2, posted, plain, sampled="s")
    r, heard, kw = b.heard[-1]
    assert r == 2 and kw == {"sampled": "s"}
    assert _same(heard[0], np.full((2, 3), 3.0, dtype=np.float32)) and heard[1] is plain


class _Handle:
    """An actor handle of the in-process backend's shape, whose calls run at once."""

    def __init__(self, obj) -> None:
        self.obj = obj

    def __getattr__(self, name):
        fn = getattr(self.obj, name)
        return type("M", (), {"remote": staticmethod(fn)})


class _Now:
    def get(self, refs):
        return refs


def test_connect_falls_back_when_any_reader_cannot_read(monkeypatch):
    cls = ray_outbox.with_outbox(_Group)
    objs = [cls(1.0), cls(2.0)]
    handles = [_Handle(o) for o in objs]
    assert ray_outbox.connect(_Now(), handles, handles[:1], Inbox())
    assert isinstance(objs[0].train(0)[0], Posted) and isinstance(objs[1].train(0)[0], np.ndarray)
    objs = [cls(1.0), cls(2.0)]
    handles = [_Handle(o) for o in objs]
    monkeypatch.setattr(objs[1], "outbox_check", lambda probes: False)
    assert not ray_outbox.connect(_Now(), handles, handles, Inbox())
    assert all(isinstance(o.train(0)[0], np.ndarray) for o in objs)  # every sender stays on the object store


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_on_ray_the_outbox_run_is_the_object_store_run(small_scenario, ray_session, mode):
    """The same run through the outboxes and through Ray's object store: metrics byte-identical,
    with half-precision views (decentralized) and a federated server; the outboxes really used."""
    from fedsim.backend import RayBackend
    from fedsim.prepare import prepare
    from fedsim.runner import Run
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    over = {"mode": mode, "rounds": 3, "engine.backend": "ray", "engine.num_actors": 3}
    if mode == "federated":
        over["topology.kind"] = "star"
    else:
        over |= {"engine.message_dtype": "float16", "engine.head_dtype": "float16"}
    got = {}
    for shm in (True, False):
        sc = parse(small_scenario(name=f"{mode}{shm}", **over, **{"engine.ray_shared_memory": shm}))
        r = Run(sc)
        r.create_dir(overwrite=True)
        r.execute()
        got[shm] = (r.dir / "metrics.jsonl").read_bytes()
        sim = Simulation(sc, prepare(sc), RayBackend())
        try:
            assert sim.outboxes == shm
            msg = sim.backend.get(sim.groups[0].train.options(num_returns=2).remote(0)[0])
            assert isinstance(msg, Posted) == shm
        finally:
            sim.close()
    assert got[True] == got[False]


def _outbox_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("fedsim-outbox" in line for line in f)


class _Rows:
    """A group's constructor: copies its rows out of the shared training arrays, keeps no view."""

    def __init__(self, setup: list[int], features: dict[str, np.ndarray], test: dict | None = None) -> None:
        self.x, self.y = features["x_train"][setup], features["y_train"][setup]
        self.test = test


def test_shared_features_are_copied_by_the_constructor_and_the_memory_let_go():
    x, y = np.arange(24, dtype=np.float32).reshape(6, 4), np.arange(6)
    before = _outbox_maps()
    box, shared = ray_outbox.share({"x_train": x, "y_train": y})
    assert _outbox_maps() == before + 1  # the sharer's own mapping
    g = ray_outbox.with_outbox(_Rows)([4, 1], shared, {"x_test": 1})
    assert _same(g.x, x[[4, 1]]) and _same(g.y, y[[4, 1]]) and g.test == {"x_test": 1}
    assert _outbox_maps() == before + 1  # the reader's mapping went with the constructor
    box.close()
    assert _outbox_maps() == before
    with pytest.raises(OutboxError, match="ray_shared_memory: false"):
        ray_outbox.with_outbox(_Rows)([0], shared)  # the sharer closed it: a one-line error naming the way out


def test_a_host_without_memfd_or_proc_keeps_the_object_store(small_scenario, ray_session, monkeypatch):
    """macOS and Windows have no ``os.memfd_create``, a sandbox may have no ``/proc``: outboxes are not
    available there, and a Ray run uses the object store (messages and features) instead of failing."""
    from fedsim.backend import RayBackend
    from fedsim.prepare import prepare
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    assert ray_outbox.available()
    monkeypatch.setattr(ray_outbox.Inbox, "can_read", lambda self, probes: False)  # no /proc to open through
    assert not ray_outbox.available()
    monkeypatch.undo()
    monkeypatch.delattr(os, "memfd_create")
    assert not ray_outbox.available()
    shared = []
    monkeypatch.setattr(ray_outbox, "share", lambda arrays: shared.append(1))
    sc = parse(small_scenario(rounds=1, **{"engine.backend": "ray"}))
    sim = Simulation(sc, prepare(sc), RayBackend())
    try:
        assert not sim.outboxes and not shared
        msg = sim.backend.get(sim.groups[0].train.options(num_returns=2).remote(0)[0])
        assert not isinstance(msg, Posted)
    finally:
        sim.close()


def _outbox_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "fedsim-outbox" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def test_recorded_messages_on_ray_are_the_object_stores_and_no_outbox_fd_is_left(
    small_scenario, ray_session, monkeypatch
):
    """``Simulation.step`` reads the messages it records through the driver's inbox: the same arrays
    as through the object store, round by round; once built, the features' outbox is closed, and
    after ``close`` the driver holds no outbox fd (a mapping keeps a duplicate of its fd)."""
    from fedsim.backend import RayBackend
    from fedsim.prepare import prepare
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    boxes = []
    real = ray_outbox.share
    monkeypatch.setattr(ray_outbox, "share", lambda arrays: boxes.append(real(arrays)) or boxes[-1])
    before = _outbox_fds()
    got = {}
    for shm in (True, False):
        sc = parse(small_scenario(rounds=3, **{"engine.backend": "ray", "engine.ray_shared_memory": shm}))
        sim = Simulation(sc, prepare(sc), RayBackend(), record_messages=2)
        try:
            assert sim.outboxes == shm and len(boxes) == 1
            assert boxes[0][0].mm is None and not boxes[0][0]._closed.alive  # the features' outbox: closed
            got[shm] = [(rec.metrics, rec.messages) for rec in sim.rounds()]
        finally:
            sim.close()
        assert _outbox_fds() == before
    assert [m for m, _ in got[True]] == [m for m, _ in got[False]]
    for (_, a), (_, b) in zip(got[True], got[False], strict=True):
        assert (a is None) == (b is None) and (a is None or a.tobytes() == b.tobytes())
    assert sum(m is not None for _, m in got[True]) == 2


def test_a_failed_start_leaves_no_outbox_open(small_scenario, ray_session, monkeypatch):
    from fedsim.backend import RayBackend
    from fedsim.prepare import prepare
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    boxes = []
    real = ray_outbox.share
    monkeypatch.setattr(ray_outbox, "share", lambda arrays: boxes.append(real(arrays)) or boxes[-1])
    before = _outbox_fds()
    sc = parse(small_scenario(**{"engine.backend": "ray"}))
    backend = RayBackend()
    monkeypatch.setattr(backend, "actor", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no actor")))
    with pytest.raises(RuntimeError, match="no actor"):
        Simulation(sc, prepare(sc), backend)
    assert len(boxes) == 1 and not boxes[0][0]._closed.alive and _outbox_fds() == before


def test_workers_that_cannot_read_the_driver_keep_the_object_store(small_scenario, ray_session, monkeypatch):
    """A Ray fedsim joined (not started) is asked once whether its workers can open the driver's
    outboxes (another PID namespace or user cannot): if not, the whole run uses the object store;
    under Ray Client a single node is never taken for this host."""
    import dataclasses

    import ray.util.client

    from fedsim.backend import RayBackend
    from fedsim.prepare import prepare
    from fedsim.scenario import parse
    from fedsim.simulation import Simulation

    backend = RayBackend()
    assert not backend.started_here and backend.single_host() and ray_outbox.workers_read_driver(backend)
    real = Outbox.post
    monkeypatch.setattr(Outbox, "post", lambda self, m, r: dataclasses.replace(real(self, m, r), pid=1))
    assert not ray_outbox.workers_read_driver(backend)  # a descriptor the workers cannot open
    monkeypatch.undo()
    monkeypatch.setattr(ray.util.client.ray, "is_connected", lambda: True)
    assert not backend.single_host()
    monkeypatch.undo()
    monkeypatch.setattr(ray_outbox, "workers_read_driver", lambda b: False)
    shared = []
    monkeypatch.setattr(ray_outbox, "share", lambda arrays: shared.append(1))
    sc = parse(small_scenario(rounds=1, **{"engine.backend": "ray"}))
    sim = Simulation(sc, prepare(sc), backend)
    try:
        assert not sim.outboxes and not shared  # neither the features nor the messages
        assert not isinstance(sim.backend.get(sim.groups[0].train.options(num_returns=2).remote(0)[0]), Posted)
    finally:
        sim.close()
