"""A group of peers hosted by one Ray actor (or in-process with ``engine.backend: local``).

One actor hosts many peers (a contiguous block of peer ids) and trains all their output layers
at once (:mod:`fedsim.heads`). Randomness comes from :mod:`fedsim.rng` keyed by global peer id,
so how peers are spread over actors never changes the numbers. What a group is given is
:class:`fedsim.group_setup.GroupSetup`; the round's messages are :mod:`fedsim.messages`; the
federated server is :mod:`fedsim.server`; a group's decentralized aggregation (its methods
``aggregate`` and helpers) is :class:`fedsim.gossip.GossipAggregation`, its minibatch draws
:class:`fedsim.minibatches.MinibatchDraws`; it inherits both.

``engine.device`` (:mod:`fedsim.device`, :attr:`GroupSetup.device`): the heads, their optimizer
state and CWR copies, the training shards, the minibatch gathers and local steps, and the test set
live on that device (moved once); the minibatch indices are drawn on the CPU and moved, messages
leave as CPU NumPy, and the aggregation runs on the CPU. With ``cpu`` every move is a no-op.

``engine.head_dtype`` (:attr:`GroupSetup.head_dtype`; float32 by default): the precision in which
the heads ``w, b``, their optimizer state and CWR's trained copies ``tw, tb`` are *stored*, between
and within phases. In float16 or bfloat16 the local steps run in float32 a chunk of peers at a time
(:func:`fedsim.heads.upcast_steps`: rounded once per peer and round, after the last local step), the
aggregation computes in float32 and its results are rounded as they are written into ``w, b``
(:meth:`PeerGroup._result_writer`), a federated client's global model is rounded as it is copied
in (:meth:`PeerGroup.set_params`), and everything that leaves the group (:meth:`PeerGroup.params`,
:meth:`PeerGroup.get_state`, the messages) is float32 (or ``engine.message_dtype``), exactly the
stored values.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

import attacks
import strategies
from fedlib.heads import num_params
from fedsim import heads, mkl_branch, mkl_vml, plugins, routing
from fedsim import rng as crng
from fedsim.device import resolve
from fedsim.gossip import GossipAggregation
from fedsim.group_setup import GroupSetup
from fedsim.messages import claimed_classes
from fedsim.minibatches import MinibatchDraws
from fedsim.routing import MESSAGE_DTYPES
from fedsim.shards import held_classes, pad_rows


def _read_only(a: np.ndarray) -> Tensor:
    """``a`` as a tensor sharing its memory (a Ray object-store array is read-only; it is only read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.asarray(a))


def counted_losses(loss: Tensor, counted: np.ndarray) -> np.ndarray:
    """The train losses ``loss [k]`` of the hosted peers in ``counted`` (bool ``[k]``: honest, and
    trained this round), float32 in peer order: a group reports them unsummed and the driver sums
    every group's at once (:func:`fedsim.simulation.train_loss_sum`), so the recorded train loss
    does not depend on how peers are grouped (a per-group float32 sum did, at float rounding)."""
    return loss.detach().cpu()[torch.from_numpy(np.asarray(counted, dtype=bool))].numpy().astype(np.float32)


class ValSplits(Sequence[tuple[Tensor, Tensor]]):
    """Each hosted peer's validation split ``(x, y)``, views of the rows stored back to back, made
    when asked: a list of them held two tensor objects per peer, 12 MiB at 10,000 peers a group
    (measured), beside the 21 MiB of the rows themselves."""

    def __init__(self, x: Tensor, y: Tensor, offsets: np.ndarray, sizes: np.ndarray) -> None:
        self.x, self.y, self.offsets, self.sizes = x, y, offsets, sizes

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, j: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        if not -len(self) <= j < len(self):
            raise IndexError(j)
        o, n = int(self.offsets[j]), int(self.sizes[j])
        return self.x[o : o + n], self.y[o : o + n]


class PeerGroup(MinibatchDraws, GossipAggregation):
    """Hosts peers ``first .. first+len(train_idx)-1``; see the module docstring."""

    def __init__(
        self, setup: GroupSetup, features: dict[str, np.ndarray], test: dict[str, np.ndarray] | None = None
    ) -> None:
        """``features``: ``x_train, y_train, x_test, y_test``, or the first two with the others in
        ``test`` (on Ray two objects, so the training arrays' object can be freed once every group
        copied its rows: :class:`fedsim.simulation.Simulation`)."""
        if test is not None:
            features = {**features, **test}
        # first: a Ray actor's process has not imported the user's rules/attacks (the driver granted them)
        plugins.load(setup.plugins, granted=True)
        mkl_vml.warm()  # oneMKL's VML kernels chosen here, in one thread, before any call races for them
        # tiny bmm's: oversubscribed threads cost 10-30x on a loaded machine (measured); one per CPU given
        torch.set_num_threads(max(1, setup.threads))
        s = self.s = setup
        self.device = resolve(s.device)  # engine.device (the module docstring): cpu unless asked
        self.ids = np.arange(s.first, s.first + len(s.train_idx))
        self.p = len(self.ids)
        self.bias = s.training.bias
        self.layer_shape = (s.num_classes, s.dim)
        # only the hosted peers' rows are copied out of the (read-only, shared) training arrays
        xtr, ytr = np.asarray(features["x_train"]), np.asarray(features["y_train"])
        # the test set is only read: shared with the caller's arrays (in-process: the driver's; on Ray:
        # the object store's, read-only), not copied into every group
        self.x_test, self.y_test = _read_only(features["x_test"]), _read_only(features["y_test"])
        self.sizes = np.asarray([len(t) for t in s.train_idx], dtype=np.int64)
        if (self.sizes == 0).any():
            raise ValueError("a peer has no training samples; use fewer peers or another partition")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        flat = np.concatenate(s.train_idx).astype(np.int64)
        self.x_local, self.y_local = torch.from_numpy(xtr[flat]), torch.from_numpy(ytr[flat])
        self.val_sizes = np.asarray([len(v) for v in s.val_idx], dtype=np.int64)
        self.val_offsets = np.concatenate([[0], np.cumsum(self.val_sizes)[:-1]])
        vflat = np.concatenate(s.val_idx).astype(np.int64)
        self.val_x, self.val_y = torch.from_numpy(xtr[vflat]), torch.from_numpy(ytr[vflat])  # splits back to back
        self.val = ValSplits(self.val_x, self.val_y, self.val_offsets, self.val_sizes)
        held = (
            s.classes[self.ids] if s.classes is not None else held_classes(ytr, s.train_idx, s.val_idx, s.num_classes)
        )
        self.local_classes = torch.from_numpy(held)  # bool [p, C]: classes in each peer's data (Bristle's "familiar")
        self.held_on_device = self.local_classes.to(self.device)  # (the aggregation reads the CPU one)
        # bool [N, C]: what every peer claims to hold (None: the rule compares no class sets)
        self.claimed = None if s.classes is None else torch.from_numpy(claimed_classes(s.classes, s.byzantine))
        self.is_byz = s.byzantine[self.ids]
        self.attack = attacks.build(s.attack.name, s.attack.params) if s.attack.name != "none" else None
        if isinstance(self.attack, attacks.DataPoisoner):
            self._poison()
        self.rule = strategies.build(s.strategy["name"], s.strategy.get("params"))
        self.topology = s.topology
        c, d = self.layer_shape
        dtype = MESSAGE_DTYPES[s.head_dtype]  # engine.head_dtype: the storage precision (the module docstring)
        self.w = torch.zeros(self.p, c, d, device=self.device, dtype=dtype)
        self.b = torch.zeros(self.p, c, device=self.device, dtype=dtype)
        self.opt = heads.OptimizerState.zeros(self.w, self.b, s.training.optimizer == "adam")
        # consolidated weights (Strategy.consolidated, Bristle's CWR): w, b are the consolidated heads
        # (sent and evaluated); tw, tb the copies trained each round and handed to the rule as ``own``
        self.cwr = bool(self.rule.consolidated)
        # (allocated at the first train() and kept: each train() copies w, b into them, as a fresh clone
        # every round page-faulted 1.15 GB per group in at 100,000 peers; tw_stale: a decentralized
        # aggregation is done with them, so _train_rows starts them again from w, b)
        self.tw, self.tb = (self.w.new_empty(0), self.b.new_empty(0)) if self.cwr else (self.w, self.b)
        self.tw_stale = True
        # the heads before this round's local training, for rules that judge against them (ctx.previous)
        self.keep_previous = "previous" in self.rule.needs
        self.previous: Tensor | None = None
        self.stale_history: Tensor | None = None  # [h, k, P] (forge_messages), stale-model attack only
        self.last_dropped = 0
        # Small shards (many peers): every peer's samples zero-padded to s.shard_pad, once
        # (then the unpadded rows are not needed any more: after poisoning, they are dropped)
        self.padded: tuple[Tensor, Tensor] | None = None
        if s.shard_pad:
            self.padded = pad_rows(self.x_local, self.y_local, self.offsets, self.sizes, s.shard_pad)[:2]
            self.x_local = self.x_local.new_empty((0, *self.x_local.shape[1:]))  # (a slice would keep the storage)
            self.y_local = self.y_local.new_empty(0)
            self.padded = (self.padded[0].to(self.device), self.padded[1].to(self.device))
        # poisoned and padded on the CPU above; trained and evaluated on engine.device (no-ops on the CPU)
        self.x_local, self.y_local = self.x_local.to(self.device), self.y_local.to(self.device)
        self.x_test, self.y_test = self.x_test.to(self.device), self.y_test.to(self.device)
        # the unlearning probe's leaver: its gradients over its first local epoch (ceil(shard / B) steps)
        self.rec_row: int | None = None
        self.recorded: list[Tensor] = []
        self.rec_left = 0
        if s.record_gradients is not None and s.first <= s.record_gradients < s.first + self.p:
            self.rec_row = int(s.record_gradients - s.first)
            bsz = s.training.batch_size
            self.rec_left = -(-int(self.sizes[self.rec_row]) // bsz)

    # ------------------------------------------------------------------ state
    def _poison(self) -> None:
        assert isinstance(self.attack, attacks.DataPoisoner)
        for j in np.flatnonzero(self.is_byz):
            o, n = self.offsets[j], self.sizes[j]
            ctx = attacks.AttackContext(
                n=self.s.received,
                f=int(self.s.byzantine.sum()),
                f_received=self.s.f,
                num_classes=self.s.num_classes,
                layer_shape=self.layer_shape,
                bias=self.bias,
                generator=crng.torch_generator(self.s.seed, "poison", int(self.ids[j])),
            )
            x, y = self.attack.poison(self.x_local[o : o + n], self.y_local[o : o + n], ctx)
            self.x_local[o : o + n], self.y_local[o : o + n] = x, y

    def params(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Flattened heads ``[p, P]`` (weight row-major, then bias), float32 whatever ``engine.head_dtype``;
        of the hosted peers ``lo .. hi - 1`` only (local indices; ``hi`` None: to the last), as
        :meth:`fedsim.simulation.Simulation.final_params` fetches them, a slice at a time."""
        w, b = self.w[lo:hi], self.b[lo:hi]
        return strategies.flatten(w, b if self.bias else None).cpu().to(torch.float32).numpy()

    def set_params(self, flat: np.ndarray | Tensor) -> None:
        """Copy flattened heads ``[p, P]`` (or one ``[P]`` / ``[1, P]`` for every hosted peer) in (rounded
        to ``engine.head_dtype``)."""
        t = flat.float() if isinstance(flat, Tensor) else torch.from_numpy(np.asarray(flat, dtype=np.float32))
        t = t.reshape(-1, self._num_params())
        if t.shape[0] == 1:
            t = t.expand(self.p, -1)
        w, b = strategies.unflatten(t, self.layer_shape, self.bias)
        self.w.copy_(w)
        if b is not None:
            self.b.copy_(b)

    def _result_writer(self, params: Any, msgs: Any) -> tuple[Callable[[Tensor, Tensor], None], Callable[[], None]]:
        """:meth:`fedsim.gossip.GossipAggregation._result_writer`, writing each chunk's aggregated
        vectors straight into the heads ``w, b`` (no ``[p, P]`` buffer of new heads: 1.15 GB per group
        at 100,000 peers); ``finish`` copies the sent heads of the peers that aggregated nothing, chunk
        by chunk. Nothing in the aggregation reads ``w, b`` (the rule's ``own`` is the trained copy or
        the sent message, and :meth:`_message` never is a view of them). A subclass whose
        ``set_params`` does more than copy (:class:`fedsim.whole.WholePeerGroup`) keeps the buffer. (A
        Ray actor's class is a subclass Ray makes, its methods wrapped (``functools.wraps``): compared
        unwrapped, else every actor kept the buffer, 0.32 GiB at 10,000 peers in one actor.)"""
        if inspect.unwrap(type(self).set_params) is not PeerGroup.set_params:
            return super()._result_writer(params, msgs)
        written = np.zeros(self.p, dtype=bool)

        def put(js: Tensor, rows: Tensor) -> None:
            w, b = strategies.unflatten(rows.to(self.device, self.w.dtype), self.layer_shape, self.bias)
            at = js.to(self.device)
            self.w.index_copy_(0, at, w)  # (index_copy_: faster than self.w[js] = w; the same rows)
            if b is not None:
                self.b.index_copy_(0, at, b)
            written[js.numpy()] = True

        def finish() -> None:
            rest = np.flatnonzero(~written)
            for i in range(0, len(rest), self.s.aggregate_chunk):
                js = torch.from_numpy(rest[i : i + self.s.aggregate_chunk])
                put(js, params[js + self.s.first])

        return put, finish

    def _message(self) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """What :meth:`train` sends: the flattened heads in ``engine.message_dtype`` (fedsim.routing),
        never a view of ``w`` in-process: a bias-free head flattens to a view, and the aggregation
        writes into ``w`` while other groups (and this one's later chunks) still read the messages.
        Where the return value is copied out as the call ends (``sends_views``: a Ray actor) and the
        heads are stored in the message's dtype: views of ``w`` and ``b``
        (:func:`fedsim.routing.head_views`; Ray writes them into its object store, no ``[p, P]`` copy
        here first: 110 MiB less at the peak of a 10,000-peer float16 run, docs/performance.md)."""
        b = self.b if self.bias else None
        views = routing.head_views(self.w, b, self.s.message_dtype) if self.s.sends_views else None
        return views if views is not None else routing.encode_head(self.w, b, self.s.message_dtype)

    def _num_params(self) -> int:
        return num_params(self.layer_shape, self.bias)

    # get_state's per-peer tensors (first dimension: the hosted peers, in id order); the other
    # entries ("t", "stale_history") are the same in every group. A checkpoint concatenates the
    # per-peer ones over groups, so it resumes under any engine.num_actors.
    PER_PEER_STATE = ("w", "b", "m_w", "m_b", "v_w", "v_b", "buffers")  # "buffers": fedsim.whole's BatchNorm
    _staged: dict[str, Tensor] | None = None  # a restore's rows, in slices (stage_rows), until set_staged_state
    _copied: frozenset[str] = frozenset()  # the per-peer entries stage_rows wrote in place, until set_staged_state

    def get_state(self, device: str = "cpu", lo: int = 0, hi: int | None = None, shared: bool = True) -> dict[str, Any]:
        """The hosted peers' heads and optimizer buffers, and the stale attack's history: everything a
        resumed group needs (tensors, an int and ``None`` only: a checkpoint stores it without pickle),
        as CPU float32 copies (a checkpoint resumes on any ``engine.device``; half-precision values
        are float32 exactly, and :meth:`set_state` rounds them back to the same values). ``device``
        ``"meta"``: the same entries, shapes and dtypes, no data and no copy (what a restore checks
        a checkpoint against). ``lo``, ``hi``: the per-peer entries (:attr:`PER_PEER_STATE`) of the
        hosted peers ``lo .. hi - 1`` only (local indices), each a compact copy (a pickled view carries
        its whole storage); ``shared`` False: without the other entries. How a checkpoint on Ray fetches
        a group's state a slice at a time (:meth:`fedsim.simulation.Simulation.state`)."""
        f32, opt = torch.float32, self.opt

        def rows(v: Tensor) -> Tensor:
            return v[lo:hi].to(device, f32, copy=True)

        st = {"w": rows(self.w), "b": rows(self.b), "m_w": rows(opt.m_w), "m_b": rows(opt.m_b)}
        if shared:
            st |= {"t": opt.t, "stale_history": self.stale_history}
        if opt.v_w is not None:
            st |= {"v_w": rows(opt.v_w), "v_b": rows(opt.v_b)}
        return st

    def _state_rows(self) -> dict[str, Tensor]:
        """:meth:`get_state`'s per-peer entries as this group's own tensors (first dimension: its
        peers), into which :meth:`set_state` and :meth:`stage_rows` copy (casting to the heads' dtype
        and device, as every restore does)."""
        opt = self.opt
        own = {"w": self.w, "b": self.b, "m_w": opt.m_w, "m_b": opt.m_b}
        return own | ({"v_w": opt.v_w, "v_b": opt.v_b} if opt.v_w is not None else {})

    def set_state(self, st: dict[str, Any], copied: Collection[str] = ()) -> None:
        """Restore :meth:`get_state`'s output (shapes checked by the caller). ``copied``: the per-peer
        entries :meth:`stage_rows` already wrote in place (:meth:`set_staged_state`); any other
        missing entry is a KeyError (a device-state file without its momentum must not restore
        the heads alone)."""
        self._copy_rows(st, copied)
        self.opt.t = st["t"]
        self.stale_history = st["stale_history"]

    def _copy_rows(self, st: dict[str, Any], copied: Collection[str]) -> None:
        """``st``'s per-peer entries into :meth:`_state_rows` but those ``copied`` (KeyError on a
        missing one); :meth:`set_state` here and in :mod:`fedsim.whole`."""
        for k, own in self._state_rows().items():
            if k not in copied:
                own.copy_(st[k])

    def stage_rows(self, lo: int, total: int, rows: dict[str, Tensor]) -> None:
        """Rows ``lo..`` of :meth:`get_state`'s per-peer entries (``total``: the hosted peers): how a
        restore on Ray hands a group its state in bounded slices
        (:meth:`fedsim.simulation.Simulation.restore`), never its whole part in one message. Copied
        into the group's own tensors at once (:meth:`_state_rows`); an entry without one (BatchNorm
        buffers, restored whole) is kept until :meth:`set_staged_state`."""
        own = self._state_rows()
        for k, v in rows.items():
            if k in own:
                own[k][lo : lo + len(v)].copy_(v)
                self._copied = self._copied | {k}
                continue
            if self._staged is None:
                self._staged = {}
            if k not in self._staged:
                self._staged[k] = v.new_empty((total, *v.shape[1:]))
            self._staged[k][lo : lo + len(v)] = v

    def set_staged_state(self, st: dict[str, Any]) -> None:
        """:meth:`set_state` of ``st`` (the shared entries) with the entries :meth:`stage_rows` kept,
        which are freed (those it copied in place are left out)."""
        staged, self._staged = self._staged or {}, None
        copied, self._copied = self._copied, frozenset()
        self.set_state(st | staged, copied)

    # ------------------------------------------------------------------ training
    def _local_steps(self, w: Tensor, b: Tensor, opt: heads.OptimizerState, batches) -> Tensor:
        return heads.local_steps(w, b, opt, batches, self.s.training, self.bias, chunked=True)

    def _train_heads(
        self, round_: int, w: Tensor, b: Tensor, opt: heads.OptimizerState, rows: np.ndarray | None = None,
        record: bool = False,
    ) -> Tensor:
        """The round's local steps on heads ``w, b`` with ``opt`` (in place) of the hosted peers ``rows``
        (local indices, the tensors' rows in that order; None: all); ``record``: the unlearning probe's
        leaver records its gradients (:meth:`_recording`). float32 heads: :func:`fedsim.heads.local_steps`
        over the round's minibatches, as always; heads stored in half precision
        (``engine.head_dtype``): :func:`fedsim.heads.upcast_steps`, a chunk of peers at a time, each
        chunk's minibatches its rows of the group's (:class:`fedsim.heads.PeerRange`), or, where the
        group's are not drawn at once, drawn for its peers only (keyed by peer id: the same draws)."""
        steps = self.s.training.local_steps
        group = self._minibatches(round_, steps, rows)
        if w.dtype == torch.float32:
            return self._local_steps(w, b, opt, self._recording(group, w, b, self.rec_row) if record else group)
        sel = np.arange(self.p) if rows is None else rows
        j = self.rec_row

        def batches_for(lo: int, hi: int, w32: Tensor, b32: Tensor):
            if isinstance(group, heads.PeerSlicedBatches):
                batches = heads.PeerRange(group, lo, hi)
            else:
                batches = self._minibatches(round_, steps, sel[lo:hi])
            return self._recording(batches, w32, b32, j - lo) if record and j is not None and lo <= j < hi else batches

        size = heads.chunk_peers(int(w[0].numel()) if len(w) else 1)
        return heads.upcast_steps(w, b, opt, batches_for, self._local_steps, size)

    def train(
        self, round_: int, global_params: np.ndarray | None = None, sampled: np.ndarray | None = None
    ) -> tuple[np.ndarray | tuple[np.ndarray, np.ndarray], np.ndarray]:
        """Local steps for every hosted peer; returns their flattened heads (:meth:`_message`) and the train losses of
        the honest ones (:func:`counted_losses`). ``sampled`` (bool ``[N]``, federated client sampling): only those
        peers take the global model and train; the others' heads and optimizer buffers are left as
        they were (their rows are still returned, and the server ignores them)."""
        if sampled is not None and not bool(sampled[self.ids].all()):
            return self._train_rows(round_, global_params, np.flatnonzero(sampled[self.ids]))
        if global_params is not None:
            self.set_params(global_params)
        if self.keep_previous:
            self.previous = torch.from_numpy(self.params().copy())
        if self.cwr:  # train a copy of the consolidated head
            self._start_trained_copy()
        loss = self._train_heads(round_, self.tw, self.tb, self.opt, record=self.rec_left > 0)
        if self.cwr:  # ... and keep only the rows of the classes each peer holds
            heads.consolidate(self.w, self.b, self.tw, self.tb, self.held_on_device)
        return self._message(), counted_losses(loss, ~self.is_byz)

    def _start_trained_copy(self) -> None:
        """CWR's trained copies ``tw, tb := w, b``: copied into the kept tensors (allocated once)."""
        if self.tw.shape != self.w.shape or self.tb.shape != self.b.shape:
            self.tw, self.tb = torch.empty_like(self.w), torch.empty_like(self.b)
        self.tw.copy_(self.w)
        self.tb.copy_(self.b)
        self.tw_stale = False

    def _release_trained_copy(self) -> None:
        """Free CWR's kept trained copies once an aggregation is done with them, on evaluation rounds
        (every ``evaluation.every`` and the last): the final heads and the evaluation never meet
        them (2.3 GB at 100,000 peers); the next train() allocates them again."""
        if self.cwr and self.tw_stale:
            self.tw, self.tb = self.tw.new_empty(0), self.tb.new_empty(0)

    def _train_rows(
        self, round_: int, global_params: np.ndarray | None, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`train` for the hosted peers ``rows`` only (local indices). Minibatches are keyed by
        peer id, so a sampled peer trains exactly as it would in a full round. Adam's step count
        ``t`` is one per group: it advances by ``local_steps`` every round, trained or not, so it
        never depends on which peers an actor hosts (a peer's bias correction counts rounds, not
        its own steps)."""
        steps = self.s.training.local_steps
        if len(rows) == 0:
            self.opt.t += steps if self.opt.v_w is not None else 0
            return self.params(), np.zeros(0, dtype=np.float32)
        idx = torch.from_numpy(rows).to(self.device)
        if self.keep_previous:  # sampled rows train below from their current heads; the others keep theirs
            self.previous = torch.from_numpy(self.params().copy())
        if global_params is not None:
            t = torch.from_numpy(np.asarray(global_params, dtype=np.float32)).reshape(-1, self._num_params())
            t = t.to(self.device)
            w, b = strategies.unflatten(t.expand(len(rows), -1), self.layer_shape, self.bias)
            self.w[idx] = w.to(self.w.dtype)  # (rounded to engine.head_dtype, as set_params does)
            if b is not None:
                self.b[idx] = b.to(self.b.dtype)
        o = self.opt
        sub = heads.OptimizerState(
            o.m_w[idx], o.m_b[idx], None if o.v_w is None else o.v_w[idx], None if o.v_b is None else o.v_b[idx], o.t
        )
        tw, tb = self.w[idx], self.b[idx]  # copies (advanced indexing); the CWR copy starts at w as in train
        if self.cwr and self.tw_stale:  # first round, or after a decentralized aggregation (never here)
            self._start_trained_copy()
        loss = self._train_heads(round_, tw, tb, sub, rows)
        if self.cwr:
            w, b = self.w[idx], self.b[idx]
            heads.consolidate(w, b, tw, tb, self.held_on_device[idx])
            self.tw[idx], self.tb[idx] = tw, tb
            self.w[idx], self.b[idx] = w, b
        else:
            self.w[idx], self.b[idx] = tw, tb
        o.m_w[idx], o.m_b[idx], o.t = sub.m_w, sub.m_b, sub.t
        if o.v_w is not None:
            o.v_w[idx], o.v_b[idx] = sub.v_w, sub.v_b
        return self.params(), counted_losses(loss, ~self.is_byz[rows])

    def _recording(self, batches, w: Tensor, b: Tensor, j: int | None):
        """Pass the batches through, first recording the leaver's minibatch gradient at its current head,
        row ``j`` of the heads being trained ``w, b`` (the head the step about to be taken starts from),
        while its first local epoch lasts."""
        assert j is not None
        for batch in batches:
            if self.rec_left > 0:
                sel = tuple(t[j : j + 1] for t in batch)
                _, gw, gb = heads.ce_grad(w[j : j + 1], b[j : j + 1] if self.bias else None, *sel)
                self.recorded.append(strategies.flatten(gw[0], gb[0] if self.bias else None).clone())
                self.rec_left -= 1
            yield batch

    def recorded_gradients(self) -> np.ndarray | None:
        """The recorded first-epoch gradients ``[B, P]`` of :attr:`GroupSetup.record_gradients` (None if
        this group does not host that peer or nothing was recorded, e.g. after a resume)."""
        if self.rec_row is None or not self.recorded:
            return None
        return torch.stack(self.recorded).cpu().numpy()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, sample: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Test accuracy/loss of hosted honest peers (those in ``sample`` if given, global ids)."""
        self._release_trained_copy()
        sel = ~self.is_byz
        if sample is not None:
            sel &= np.isin(self.ids, sample)
        idx = torch.from_numpy(np.flatnonzero(sel)).to(self.device)
        acc, loss = heads.accuracy_and_loss(self.w[idx], self.b[idx] if self.bias else None, self.x_test, self.y_test)
        return {"ids": self.ids[sel], "accuracy": acc.cpu().numpy(), "loss": loss.cpu().numpy()}

    def mkl_branch(self) -> str | None:
        """oneMKL's branch in this actor's process (:func:`fedsim.mkl_branch.current`)."""
        return mkl_branch.current()

    def pid(self) -> int:
        """The hosting process (diagnostics; tests kill it)."""
        import os

        return os.getpid()
