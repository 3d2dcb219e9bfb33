"""Round messages between Ray actors on one host, through each sender's shared-memory outbox.

On Ray a group's message (its peers' heads: ``[N/2, 5,770]`` float32, 1.15 MB per group at
N = 100 clients) used to travel through Ray's object store: the actor's return value was put into
it, every reader fetched it, and the store freed it once the round's references were dropped.
On one machine that costs more than the bytes: ``benchmarks/ray_overhead.py`` measured 6–7 ms
of a 9–11 ms round floor at N = 100 for two such objects (docs/performance.md, "Ray: round
messages through shared memory"). When every actor runs on the driver's host, each group instead
writes its message into its own **outbox**, a ``memfd`` the group's process owns, and its reply
carries a small :class:`Posted` descriptor; a reader (the server, the other groups, the driver when
it records messages) maps the sender's outbox once through ``/proc/<pid>/fd/<fd>`` and reads the
message in place, read-only, as Ray's object store hands out read-only arrays. The values are the
same bytes, so the metrics are the same.

The driver hands the groups their training features the same way (:func:`share`): it writes them
into an outbox of its own, each group's constructor copies its peers' rows out of it, and the
driver closes it once every group is built, so that memory is given back. Through Ray's object
store those pages stayed resident after the store freed the features, and messages put later
landed in them or in fresh pages by the store's allocation: at 10,000 peers on one actor the run's
peak moved by 110 MiB from one run to the next, and an outbox message beside the features' pages
was 110 MiB more; with both through outboxes the peak is the lower one, every time (issue 19's
1.5 GB goal; docs/performance.md).

* Nothing outlives the run: a ``memfd`` has no name in any file system, and its memory is freed
  when the last process that maps it ends (a killed run leaks nothing). Only processes of the same
  user on the same host can open it (``/proc``'s ptrace-read check); nothing listens anywhere.
* It is used only with ``engine.ray_shared_memory`` (default on), where Linux's ``memfd`` and
  ``/proc`` are (:func:`available`; elsewhere, macOS included, the object store), on a Ray of a
  single host, the driver's, not through Ray Client (:meth:`fedsim.backend.RayBackend.single_host`),
  whose workers can open the driver's outboxes (:func:`workers_read_driver`: a Ray fedsim started
  here, or one task's answer), and for the messages only where every reader can open every
  outbox: :func:`connect` has each actor (and the driver) open every other's and check its random
  tag. Anywhere else the run keeps Ray's object store (no error).
* Ordering: a sender writes round ``r + 1``'s message only once every reader of round ``r`` is
  done. :meth:`fedsim.simulation.Simulation.step` guarantees it (the driver waits for every
  aggregation of a round before it submits the next round's training), and it is what protects
  the arrays a reader holds: they are views, and a rewrite would change them under it. Every read
  checks that the outbox still holds the round the descriptor names, so a read that starts after a
  rewrite is a one-line error, never another round's values.
"""

from __future__ import annotations

import dataclasses
import logging
import mmap
import os
import secrets
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HEADER = 64  # bytes: the tag (16), the round (int64), then padding to the first part
ALIGN = 64  # every part starts on a 64-byte boundary
GROW = 1 << 20  # an outbox grows in whole MiB (a message a little larger than the last does not remap it)
# round tags that are not rounds: a probe (Outbox.probe), an outbox being written, share()'s arrays
PROBE_ROUND, WRITING, SHARED_ROUND = -1, -2, -3


@dataclasses.dataclass(frozen=True)
class Posted:
    """A message written into the outbox of process ``pid``'s ``fd``, as one array or a pair of
    arrays (:func:`fedsim.routing.head_views`' message): each part's ``(offset, dtype, shape)``.
    ``round``: the round it was posted for (:data:`PROBE_ROUND`: :meth:`Outbox.probe`). ``size``: the outbox's
    bytes when it was written (a reader maps at least that much)."""

    pid: int
    fd: int
    tag: bytes
    size: int
    round: int
    parts: tuple[tuple[int, str, tuple[int, ...]], ...]
    pair: bool


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class Outbox:
    """The sender's side: one ``memfd`` per process, rewritten by every :meth:`post`."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("fedsim-outbox", os.MFD_CLOEXEC)
        # (closed with the object if close() is never called: an error between share() and close())
        self._closed = weakref.finalize(self, os.close, self.fd)
        self.tag = secrets.token_bytes(16)
        self.size = 0
        self.mm: mmap.mmap | None = None
        self._grow(HEADER)

    def _grow(self, need: int) -> None:
        if need <= self.size:
            return
        size = -(-need // GROW) * GROW
        os.ftruncate(self.fd, size)
        if self.mm is not None:
            self.mm.close()
        self.mm = mmap.mmap(self.fd, size)
        self.size = size
        self.mm[:16] = self.tag

    def post(self, message: np.ndarray | tuple[np.ndarray, ...], round_: int) -> Posted:
        """Write ``message`` (an array or a tuple of arrays) and the round into the outbox; its descriptor."""
        arrays = message if isinstance(message, tuple) else (message,)
        arrays = tuple(np.asarray(a) for a in arrays)
        offsets, at = [], HEADER
        for a in arrays:
            offsets.append(at)
            at = _aligned(at + a.nbytes)
        self._grow(at)
        assert self.mm is not None
        self.mm[16:24] = np.int64(WRITING).tobytes()  # (no round's tag while the parts change)
        parts = []
        for a, off in zip(arrays, offsets, strict=True):
            dst = np.frombuffer(self.mm, dtype=a.dtype, count=a.size, offset=off).reshape(a.shape)
            np.copyto(dst, a)
            del dst
            parts.append((off, a.dtype.str, tuple(a.shape)))
        self.mm[16:24] = np.int64(round_).tobytes()
        return Posted(os.getpid(), self.fd, self.tag, self.size, round_, tuple(parts), isinstance(message, tuple))

    def probe(self) -> Posted:
        """An empty message tagged :data:`PROBE_ROUND`: whether a reader can open this outbox at all."""
        return self.post(np.zeros(0, dtype=np.uint8), PROBE_ROUND)

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        self._closed()  # os.close(fd), once


@dataclasses.dataclass(frozen=True)
class Shared:
    """Named arrays a process wrote into its outbox (:func:`share`), read by an actor's constructor."""

    keys: tuple[str, ...]
    posted: Posted


def share(arrays: dict[str, np.ndarray]) -> tuple[Outbox, Shared]:
    """``arrays`` written into a new outbox of this process: the outbox (close it once every reader
    is built) and the descriptor to pass to :func:`with_outbox` classes' constructors."""
    box = Outbox()
    return box, Shared(tuple(arrays), box.post(tuple(arrays.values()), SHARED_ROUND))


class OutboxError(RuntimeError):
    """An outbox that cannot be read: another host, gone, or rewritten since its descriptor."""


class Inbox:
    """The reader's side: each sender's outbox mapped once (again when it grew), read in place."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, int, bytes], mmap.mmap] = {}

    def _map(self, p: Posted) -> mmap.mmap:
        key = (p.pid, p.fd, p.tag)
        mm = self._maps.get(key)
        if mm is None or len(mm) < p.size:
            try:
                fd = os.open(f"/proc/{p.pid}/fd/{p.fd}", os.O_RDONLY)
            except OSError as e:
                raise OutboxError(f"cannot open process {p.pid}'s message outbox ({e.strerror})") from None
            try:
                size = os.fstat(fd).st_size
                if size < p.size:
                    raise OutboxError(f"process {p.pid}'s message outbox is {size} bytes, its message needs {p.size}")
                mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            if mm[:16] != p.tag:
                mm.close()
                raise OutboxError(f"process {p.pid}'s fd {p.fd} is not the outbox its message names")
            self._maps[key] = mm  # (an old, smaller mapping is freed when no array reads it any more)
        return mm

    def read(self, p: Posted) -> np.ndarray | tuple[np.ndarray, ...]:
        """The message ``p`` names, as read-only arrays over the sender's outbox (no copy)."""
        mm = self._map(p)
        held = int(np.frombuffer(mm, dtype=np.int64, count=1, offset=16)[0])
        if held != p.round:
            raise OutboxError(
                f"process {p.pid}'s outbox holds round {held}'s message, not round {p.round}'s: a sender "
                "wrote a new round before every reader of the last one was done"
            )
        arrays = tuple(
            np.frombuffer(mm, dtype=np.dtype(dt), count=int(np.prod(shape)), offset=off).reshape(shape)
            for off, dt, shape in p.parts
        )
        return arrays if p.pair else arrays[0]

    def close(self) -> None:
        """Drop the mappings (each is unmapped once no array read from it is left)."""
        self._maps.clear()

    def shared(self, s: Shared) -> dict[str, np.ndarray]:
        """:func:`share`'s arrays by name, read-only views of the sharing process's outbox."""
        arrays = self.read(s.posted)
        assert isinstance(arrays, tuple)
        return dict(zip(s.keys, arrays, strict=True))

    def resolve(self, values: Sequence[Any]) -> list[Any]:
        """``values`` with every :class:`Posted` replaced by the message it names."""
        return [self.read(v) if isinstance(v, Posted) else v for v in values]

    def can_read(self, probes: Sequence[Posted]) -> bool:
        """Whether every probe's outbox opens here and carries its tag (:func:`connect`)."""
        try:
            for p in probes:
                self.read(p)
        except OutboxError as e:
            log.info("message outboxes not used: %s", e)
            return False
        return True


def available() -> bool:
    """Whether this host can share outboxes: Linux's ``memfd_create`` and a ``/proc`` through which
    this process opens its own outbox again (not macOS or Windows, nor a ``/proc``-less sandbox: there
    a run keeps Ray's object store)."""
    if not hasattr(os, "memfd_create"):
        return False
    try:
        box = Outbox()
    except OSError:
        return False
    try:
        return Inbox().can_read([box.probe()])
    finally:
        box.close()


def _reads(probe: Posted) -> bool:
    """(In a Ray worker) whether this process can read ``probe``'s outbox."""
    return Inbox().can_read([probe])


def workers_read_driver(backend: Any) -> bool:
    """Whether a Ray worker of ``backend`` can read an outbox of this process (:func:`share`'s
    features): asked of one task. A Ray fedsim started here needs no asking (its workers are this
    process's descendants: same host, user and PID namespace); one it joined may run its workers in
    another PID namespace or under another user (then the object store)."""
    if getattr(backend, "started_here", False):
        return True
    box = Outbox()
    try:
        return bool(backend.call(_reads, box.probe()))
    except Exception as e:  # noqa: BLE001 - whatever stops the task, the answer is no
        log.info("message outboxes not used: %s", e)
        return False
    finally:
        box.close()


def usable(backend: Any, enabled: bool) -> bool:
    """Whether a run on ``backend`` passes its training features and round messages through outboxes:
    ``enabled`` (``engine.ray_shared_memory``), a Ray backend, :func:`available` here, a single host
    (:meth:`fedsim.backend.RayBackend.single_host`) whose workers can read this process's outboxes
    (:func:`workers_read_driver`). (:func:`connect` checks the actors' outboxes once they exist.)"""
    return (
        enabled and getattr(backend, "name", None) == "ray" and available() and backend.single_host()
        and workers_read_driver(backend)
    )


def with_outbox(cls: type) -> type:
    """``cls`` (a peer group or server class) whose round protocol can go through outboxes: its
    constructor reads any :class:`Shared` argument (and lets go of the mapping once built); once
    :meth:`outbox_enable` is called, ``train`` posts its message (the first of its two return
    values) and replies with the :class:`Posted` descriptor, and ``aggregate`` reads any descriptor
    among its messages. Until then it behaves as ``cls``."""

    class OutboxActor(cls):  # type: ignore[misc,valid-type]
        _outbox: Outbox | None = None
        _inbox: Inbox | None = None
        _posting = False

        def __init__(self, *args: Any, **kw: Any) -> None:
            if not any(isinstance(a, Shared) for a in args):
                super().__init__(*args, **kw)
                return
            inbox = Inbox()
            try:
                args = tuple(inbox.shared(a) if isinstance(a, Shared) else a for a in args)
            except OutboxError as e:
                raise OutboxError(f"{e}; set engine.ray_shared_memory: false") from None
            super().__init__(*args, **kw)
            del args  # (the views: the mapping goes once the class kept none of them, as a group does)
            inbox.close()

        def outbox_open(self) -> Posted:
            """Create this process's outbox; the probe descriptor :func:`connect` hands the others."""
            self._outbox, self._inbox = Outbox(), Inbox()
            return self._outbox.probe()

        def outbox_check(self, probes: Sequence[Posted]) -> bool:
            assert self._inbox is not None
            return self._inbox.can_read(probes)

        def outbox_enable(self) -> None:
            self._posting = True

        def train(self, round_: int, *args: Any, **kw: Any) -> Any:
            message, losses = super().train(round_, *args, **kw)
            if self._posting:
                assert self._outbox is not None
                message = self._outbox.post(message, round_)
            return message, losses

        def aggregate(self, round_: int, *params: Any, **kw: Any) -> Any:
            if self._inbox is not None:
                params = tuple(self._inbox.resolve(params))
            return super().aggregate(round_, *params, **kw)

    OutboxActor.__name__ = cls.__name__  # (Ray names the actor's process and log lines after the class)
    OutboxActor.__qualname__ = cls.__qualname__
    OutboxActor.__doc__ = cls.__doc__
    return OutboxActor


def connect(backend: Any, actors: Sequence[Any], senders: Sequence[Any], driver: Inbox) -> bool:
    """Open an outbox in every actor of ``actors`` (built from :func:`with_outbox` classes) and,
    if every actor and the driver can read every other's, switch ``senders`` to posting their
    messages there. Returns whether they did (False: Ray's object store, as without this module)."""
    probes = backend.get([a.outbox_open.remote() for a in actors])
    readable = backend.get([a.outbox_check.remote(probes) for a in actors])
    if not (all(readable) and driver.can_read(probes)):
        return False
    backend.get([s.outbox_enable.remote() for s in senders])
    return True
