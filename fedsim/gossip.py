"""Decentralized aggregation of a peer group: every honest hosted peer applies the rule to its
in-neighbours' messages (:meth:`GossipAggregation.aggregate`), vectorised by in-degree bucket
(``Strategy.aggregate_batch``) with a per-peer fallback (per-receiver attacks, root updates, rules
without a batched form). Its methods were :class:`fedsim.peers.PeerGroup`'s, moved unchanged;
:class:`~fedsim.peers.PeerGroup` inherits them and sets up the state they read (declared below).
What runs where (``engine.device``, :mod:`fedsim.device`; :attr:`GossipAggregation.aggregation_device`):

* the messages, the forging attacks (:func:`fedsim.messages.forge_messages`), the in-degree
  buckets, the finite-row checks and every random draw stay on the CPU (NumPy / :mod:`fedsim.rng`);
* the batched path (:meth:`GossipAggregation._aggregate_batched`, rules with
  ``Strategy.aggregate_batch``, listed below) runs on the aggregation device: each chunk's heard
  rows are gathered on the CPU in the message dtype and moved once (:meth:`fedsim.routing.Rows.take`),
  with the chunk's sent heads, its ``own`` rows (CWR's trained copies are read where they live) and
  its context (validation splits, familiar classes, overlaps, previous heads; built on the CPU,
  :meth:`strategies.AggregationContext.to`); the rule computes there and its result is written into
  the device heads by ``put``, with no copy through the CPU;
* the batched rules: ``fedavg``, ``median``, ``trimmed_mean``, ``krum``, ``multikrum``,
  ``centered_clipping`` (each bit-identical to its per-peer call on the CPU, ``tests/test_batched.py``),
  and ``bristle`` when every sender a peer heard is a candidate (at most ``k + e``, or
  ``num_candidates``). On the CPU only ``fedavg`` and ``bristle`` take the batched path: the others'
  batched forms were slower there than the per-peer loop (``Strategy.batch_on_cpu``), so a CPU run
  aggregates them per peer, as before;
* the per-peer path, the named fallback "per-peer on the CPU" (:func:`has_batched_form`): every
  other rule (``bulyan``, ``geomed``, ``mozi``, ``balance``, ...), Bristle's sampling prioritizer
  when a peer heard more senders than it keeps as candidates, per-receiver attacks, FLTrust's root
  updates, a chunk whose rule declines (``aggregate_batch`` returns None) and peers that heard a
  non-finite row; it runs on the CPU as before: its ``own`` rows are copied off the device and its
  results go back through ``put``.

With ``engine.device: cpu`` nothing moves (byte-identical to the CPU-only code, ``tests/test_device.py``).
Not yet run on a GPU: checked on the CPU and on torch's ``meta`` device only (``tests/test_device_aggregation.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

import attacks
import strategies
from fedsim import heads, routing
from fedsim import rng as crng
from fedsim.messages import forge_messages
from fedsim.runfacts import sends_forgeries
from fedsim.shards import pad_rows
from fedsim.threads import runs_alone
from strategies.base import widens

if TYPE_CHECKING:
    from fedsim.group_setup import GroupSetup
    from fedsim.topology import Topology

CPU = torch.device("cpu")


def has_batched_form(rule: strategies.Strategy, device: torch.device = CPU) -> bool:
    """Whether the batched path aggregates with ``rule`` on ``device``: ``rule`` overrides
    ``Strategy.aggregate_batch`` or declares ``Strategy.call_is_batched`` (its ``__call__`` is the
    batched form) and, on the CPU, is faster batched there
    (``Strategy.batch_on_cpu``). Otherwise (the named fallback, "per-peer on the CPU") every peer
    aggregates in the per-peer loop on the CPU, whatever ``engine.device`` is."""
    batched = type(rule).aggregate_batch is not strategies.Strategy.aggregate_batch or rule.call_is_batched
    return batched and (device.type != "cpu" or rule.batch_on_cpu)


def gather(rows: Any, idx: Tensor, device: torch.device, float32: bool = True) -> Tensor:
    """Rows ``idx`` of the messages (:class:`fedsim.routing.Rows` or a CPU tensor: a forger's output)
    as float32 on ``device``, moved once; ``float32=False``: a :class:`~fedsim.routing.Rows`'s rows
    stay in the messages' dtype (for a rule that ``widens_received``)."""
    return rows.take(idx, device, float32) if isinstance(rows, routing.Rows) else rows[idx].to(device)


class GossipAggregation:
    """The aggregation half of :class:`fedsim.peers.PeerGroup` (which sets every attribute below
    in its ``__init__`` and provides ``_local_steps`` and ``set_params``)."""

    s: GroupSetup
    ids: np.ndarray  # global ids of the hosted peers
    p: int
    bias: bool
    layer_shape: tuple[int, int]
    is_byz: np.ndarray  # bool [p]
    val: Sequence[tuple[Tensor, Tensor]]  # each hosted peer's validation split (peers.ValSplits)
    val_x: Tensor
    val_y: Tensor
    val_sizes: np.ndarray
    val_offsets: np.ndarray
    local_classes: Tensor  # bool [p, C]
    claimed: Tensor | None  # bool [N, C]
    attack: attacks.UpdateForger | attacks.DataPoisoner | None
    rule: strategies.Strategy
    topology: Topology
    w: Tensor
    b: Tensor
    tw: Tensor
    tb: Tensor
    cwr: bool
    previous: Tensor | None
    stale_history: Tensor | None

    @property
    def aggregation_device(self) -> torch.device:
        """Where the batched path runs: the linear-head group's resolved ``engine.device``
        (``self.device``) when its ``GroupSetup.device`` is not the CPU; else the CPU (a whole-model
        group, :mod:`fedsim.whole`, keeps ``GroupSetup.device: cpu`` and aggregates on the CPU)."""
        return CPU if self.s.device == "cpu" else self.device

    def _overlap(self, js: Tensor, senders: Tensor) -> Tensor | None:
        """``|F_i ∩ F_j|`` for hosted peers ``js [...]`` and the senders they heard ``senders [..., n]``
        (global ids), from the class sets peers claim (None: the rule compares no class sets)."""
        if self.claimed is None:
            return None
        return (self.claimed[senders] & self.local_classes[js][..., None, :]).sum(dim=-1)

    def _ctx(
        self, j: int, round_: int, f: int, root: Tensor | None, seed: int, overlap: Tensor | None = None
    ) -> strategies.AggregationContext:
        vx, vy = self.val[j]
        return strategies.AggregationContext(
            layer_shape=self.layer_shape,
            bias=self.bias,
            f=f,
            round=round_,
            total_rounds=self.s.rounds,
            val_x=vx,
            val_y=vy,
            local_classes=self.local_classes[j],
            root_update=root,
            generator=torch.Generator().manual_seed(seed),
            overlap=overlap,
            previous=None if self.previous is None else self.previous[j],
        )

    def _batch_ctx(self, js: np.ndarray, round_: int, senders: np.ndarray) -> strategies.AggregationContext:
        """The validation splits and familiar classes of hosted peers ``js``, stacked and padded, and
        the classes they share with the senders they heard (``senders [len(js), n]``)."""
        sizes = self.val_sizes[js]
        vx, vy, mask = pad_rows(self.val_x, self.val_y, self.val_offsets[js], sizes, int(sizes.max(initial=0)))
        return strategies.AggregationContext(
            layer_shape=self.layer_shape,
            bias=self.bias,
            f=self.s.f,
            round=round_,
            total_rounds=self.s.rounds,
            val_x=vx,
            val_y=vy,
            val_mask=mask,
            local_classes=self.local_classes[torch.from_numpy(js)],
            overlap=self._overlap(torch.from_numpy(js), torch.from_numpy(senders)),
            previous=None if self.previous is None else self.previous[torch.from_numpy(js)],
        )

    def _aggregate_batched(
        self,
        round_: int,
        params: Tensor,
        msgs: Tensor,
        valid: Tensor,
        indptr: np.ndarray,
        indices: np.ndarray,
        put: Callable[[Tensor, Tensor], None],
        own_rows: Callable[[Tensor, torch.device], Tensor],
    ) -> tuple[np.ndarray, int | None]:
        """Honest present hosted peers grouped by how many valid messages they heard, one
        vectorised rule call (``Strategy.aggregate_batch``) per group and chunk of peers instead
        of one call per peer. Returns which hosted peers are done (the rest go through the
        per-peer loop) and the messages dropped for all of them (None: the rule has no batched
        form). ``put(js, rows)`` stores the aggregated vectors of hosted peers ``js``; ``own_rows(js, device)``:
        what the rule gets as hosted peers ``js``' own vectors (their sent heads, or with consolidated
        weights their trained copies), on ``device``. ``params`` and ``msgs`` may be
        :class:`fedsim.routing.Rows`: only each chunk's heard rows are gathered, and moved once to
        :attr:`aggregation_device` (with the chunk's sent heads and context; the rule runs there and
        ``put`` gets its result there). Chunks of
        ``engine.aggregate_chunk`` peers (64: a chunk's float64 working set stays inside the cache)
        bound the gathered ``[chunk, n, P]`` tensors; results do not depend on the chunk size."""
        chunk, dev = self.s.aggregate_chunk, self.aggregation_device
        done = np.zeros(self.p, dtype=bool)
        if not has_batched_form(self.rule, dev):
            return done, None
        active = ~self.is_byz if self.s.absent is None else ~self.is_byz & ~self.s.absent[self.ids]
        honest = np.flatnonzero(active)
        pids = self.ids[honest]
        start, deg = indptr[pids], indptr[pids + 1] - indptr[pids]
        owner = np.repeat(np.arange(len(honest)), deg)
        senders = indices[np.repeat(start - (np.cumsum(deg) - deg), deg) + np.arange(int(deg.sum()))]
        ok = valid.numpy()[senders]
        gone = ~ok if self.s.absent is None else ~ok & ~self.s.absent[senders]  # absent senders: not "dropped"
        dropped = int(gone.sum())
        owner, senders = owner[ok], senders[ok]  # each peer's valid in-neighbours, in order
        nvalid = np.bincount(owner, minlength=len(honest))
        table = np.zeros((len(honest), int(nvalid.max(initial=0))), dtype=np.int64)
        table[owner, np.arange(len(owner)) - (np.cumsum(nvalid) - nvalid)[owner]] = senders
        # a peer that heard a non-finite row: per-peer path drops it
        finite = msgs.finite() if isinstance(msgs, routing.Rows) else strategies.finite_rows(msgs)
        for n in np.unique(nvalid):
            rows = np.flatnonzero(nvalid == n)
            if n == 0:  # nothing heard: keep the own model (``strategies.aggregate`` does the same)
                done[honest[rows]] = True
                continue
            for i in range(0, len(rows), chunk):
                r = rows[i : i + chunk]
                r = r[finite[torch.from_numpy(table[r, :n])].all(dim=1).numpy()]
                if len(r) == 0:
                    continue
                js = honest[r]
                sent = gather(params, torch.from_numpy(self.ids[js]), dev)
                received = gather(msgs, torch.from_numpy(table[r, :n]), dev, not widens(self.rule))
                ctx = self._batch_ctx(js, round_, table[r, :n]).to(dev)  # (built on the CPU, moved once)
                out = strategies.aggregate_batch(self.rule, own_rows(torch.from_numpy(js), dev), received, ctx, sent)
                if out is None:
                    continue
                put(torch.from_numpy(js), out)
                done[js] = True
        return done, dropped

    def _root_updates(self, round_: int) -> Tensor:
        """FLTrust's trusted update for each hosted peer: its own head trained on its validation split."""
        # (on the CPU, with the validation splits; in float32 whatever engine.head_dtype)
        w, b = self.w.to("cpu", torch.float32, copy=True), self.b.to("cpu", torch.float32, copy=True)
        opt = heads.OptimizerState.zeros(w, b, self.s.training.optimizer == "adam")
        B = self.s.training.batch_size
        sizes = np.asarray([max(len(v[1]), 1) for v in self.val])
        for k in range(self.s.training.local_steps):
            r = crng.integers(sizes[:, None], self.s.seed, "root", round_, k, self.ids[:, None], np.arange(B)[None, :])
            x = torch.stack(
                [
                    self.val[j][0][torch.from_numpy(r[j])] if len(self.val[j][1]) else torch.zeros(B, self.s.dim)
                    for j in range(self.p)
                ]
            )
            y = torch.stack(
                [
                    self.val[j][1][torch.from_numpy(r[j])] if len(self.val[j][1]) else torch.zeros(B, dtype=torch.long)
                    for j in range(self.p)
                ]
            )
            self._local_steps(w, b, opt, [(x, y)])
        return strategies.flatten(w, b if self.bias else None)

    @runs_alone  # in-process: one group after another, on all the run's threads (fedsim.threads.runs_alone)
    def aggregate(self, round_: int, *all_params: np.ndarray) -> dict[str, int]:
        """Decentralized aggregation: every honest hosted peer aggregates its in-neighbours' messages
        (every group's message arrays, read through :class:`fedsim.routing.Rows`: only heard rows are
        gathered; a forging attack gets them concatenated, as its forger sees every vector)."""
        rows = routing.Rows([routing.decode(a) for a in all_params])
        params: Any = rows.full() if sends_forgeries(self.attack, self.s.byzantine) else rows
        history = self.stale_history  # before this round: per-receiver forgeries read it too
        msgs, valid, self.stale_history = forge_messages(self.attack, self.s, round_, params, history)
        indptr, indices = self.topology.in_neighbors(round_)
        put, finish = self._result_writer(params, msgs)

        # the rule's ``own`` on ``device``: the sent heads, or with consolidated weights the trained copies
        def own_rows(js: Tensor, device: torch.device = CPU) -> Tensor:
            if self.cwr:  # (the trained copies live on engine.device: read there, copied only to the CPU path)
                at = js.to(self.tw.device)
                tb = self.tb.index_select(0, at) if self.bias else None
                rows = strategies.flatten(self.tw.index_select(0, at), tb)  # (float32: engine.head_dtype upcast)
                return (rows.cpu() if device.type == "cpu" else rows.to(device)).to(torch.float32)
            return gather(params, js + self.s.first, device)

        root = self._root_updates(round_) if "root_update" in self.rule.needs else None
        dropped = skipped = 0
        per_receiver = isinstance(self.attack, attacks.UpdateForger) and self.attack.per_receiver
        absent_t = torch.from_numpy(self.s.absent) if self.s.absent is not None else None
        done, batch_dropped = np.zeros(self.p, dtype=bool), None
        if not per_receiver and root is None:
            done, batch_dropped = self._aggregate_batched(round_, params, msgs, valid, indptr, indices, put, own_rows)
        dropped = batch_dropped or 0
        seeds = crng.derive_seeds(self.s.seed, "strategy", round_, self.ids)
        for j, pid in enumerate(self.ids):
            if self.is_byz[j] or done[j] or (self.s.absent is not None and self.s.absent[pid]):
                continue
            nbrs = torch.from_numpy(indices[indptr[pid] : indptr[pid + 1]])
            m, v = msgs, valid
            if per_receiver:
                honest_n = nbrs[~torch.from_numpy(self.s.byzantine[nbrs.numpy()])]
                m, v, _ = forge_messages(
                    self.attack,
                    self.s,
                    round_,
                    params,
                    history,
                    receiver=int(pid),
                    nbr_honest=params[honest_n],
                )
            ok = v[nbrs]
            if batch_dropped is None:  # else already counted for every honest present hosted peer
                dropped += int((~ok).sum()) if self.s.absent is None else int((~ok & ~absent_t[nbrs]).sum())
            sent = params[pid]
            overlap = self._overlap(torch.tensor(j), nbrs[ok])
            ctx = self._ctx(j, round_, self.s.f, None if root is None else root[j], int(seeds[j]), overlap)
            try:
                out, _ = strategies.aggregate(self.rule, own_rows(torch.tensor([j]))[0], m[nbrs[ok]], ctx, sent)
            except strategies.CannotAggregateError:  # this round's vectors; anything else is a bug: raised
                out, skipped = sent, skipped + 1
            put(torch.tensor([j]), out[None])
        finish()
        if self.cwr:  # the trained copies are not read again before the next train() overwrites them
            self.tw_stale = True
        return {"dropped": dropped, "skipped": skipped}

    def _result_writer(self, params: Any, msgs: Any) -> tuple[Callable[[Tensor, Tensor], None], Callable[[], None]]:
        """``(put, finish)``: ``put(js, rows)`` stores the aggregated vectors of hosted peers ``js``
        (local indices); ``finish()`` gives every hosted peer its new head, the stored vector or, for a
        peer that aggregated nothing (Byzantine, absent, nothing heard), its own sent head.

        Here (and for a group whose ``set_params`` does more than copy, :mod:`fedsim.whole`) the
        vectors are collected in a ``[p, P]`` copy of the sent heads and handed to ``set_params``;
        :class:`fedsim.peers.PeerGroup` writes them straight into its heads instead."""
        new = params[torch.arange(self.s.first, self.s.first + self.p)]  # the hosted peers' own heads (a copy)

        def put(js: Tensor, rows: Tensor) -> None:
            new[js] = rows

        return put, lambda: self.set_params(new)
