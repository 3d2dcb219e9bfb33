"""How a peer group draws its local steps' minibatches: each hosted peer's indices into its own
shard, from :mod:`fedsim.rng` keyed by round, step and global peer id (:meth:`MinibatchDraws._draw`),
all the steps of a round drawn in one call while they are few (:attr:`MinibatchDraws.DRAW_AT_ONCE`),
and the gathered (or, for small shards, count-weighted padded) batch (:meth:`MinibatchDraws._batch`).
Its methods were :class:`fedsim.peers.PeerGroup`'s, moved unchanged; :class:`~fedsim.peers.PeerGroup`
inherits them and sets up the state they read (declared below).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedsim import rng as crng
from fedsim.heads import kept_empty

if TYPE_CHECKING:
    from fedsim.group_setup import GroupSetup


class MinibatchDraws:
    """The minibatch half of :class:`fedsim.peers.PeerGroup` (which sets every attribute below in
    its ``__init__``)."""

    s: GroupSetup
    ids: np.ndarray  # global ids of the hosted peers
    sizes: np.ndarray  # each hosted peer's shard size
    offsets: np.ndarray  # where each hosted peer's shard starts in x_local / y_local
    x_local: Tensor
    y_local: Tensor
    padded: tuple[Tensor, Tensor] | None  # the zero-padded shards (s.shard_pad), or None
    device: torch.device

    def _draw(self, round_: int, step: int | np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Each hosted peer's minibatch: ``[p, B]`` indices into its own shard (with replacement);
        ``rows``: only those hosted peers (local indices), ``[len(rows), B]``; ``step`` an array
        ``[k, 1, 1]`` of steps: ``[k, p, B]``, the same numbers as ``k`` calls."""
        B = self.s.training.batch_size
        sizes, ids = (self.sizes, self.ids) if rows is None else (self.sizes[rows], self.ids[rows])
        return crng.integers(sizes[:, None], self.s.seed, "batch", round_, step, ids[:, None], np.arange(B)[None, :])

    # every local step's minibatch indices drawn in one call while they are at most this many numbers
    # (the hash is elementwise: the same numbers as step by step; at 50 peers × 32 × 5 steps one call
    # took 0.22 ms against 0.73-1.01 ms for five, docs/performance.md "Where an in-process round
    # goes"); above it, step by step, so a group of 100,000 peers holds no [steps, p, B] temporaries
    DRAW_AT_ONCE = 1 << 20

    def _minibatches(self, round_: int, steps: int, rows: np.ndarray | None = None):
        """:meth:`_batch` for steps ``0 .. steps - 1``, the indices of all steps drawn at once when
        they are at most :attr:`DRAW_AT_ONCE` numbers (then a :class:`StepBatches`, which
        :func:`fedsim.heads.local_steps` also reads a chunk of peers at a time)."""
        p = len(self.ids) if rows is None else len(rows)
        if steps * p * self.s.training.batch_size > self.DRAW_AT_ONCE:
            return (self._batch(round_, k, rows) for k in range(steps))
        return StepBatches(self, self._draw(round_, np.arange(steps)[:, None, None], rows), rows)  # [steps, p, B]

    def _batch(
        self, round_: int, step: int, rows: np.ndarray | None = None, r: np.ndarray | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """A local step's minibatch for every hosted peer: the gathered ``(x [p, B, d], y [p, B])``,
        or, for small shards (``s.shard_pad``), ``(x, y, weights)`` over the zero-padded shards with
        ``weights [p, shard_pad]`` = draw count / B (:func:`fedsim.heads.ce_grad`): the same
        gradient without copying a batch larger than the shards at every step. ``rows``: only those
        hosted peers (local indices). ``r``: the step's indices if already drawn (:meth:`_minibatches`)."""
        r = self._draw(round_, step, rows) if r is None else r
        return self._rows_batch(r, self.offsets if rows is None else self.offsets[rows], rows)

    def _rows_batch(
        self, r: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None, x_out: Tensor | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """:meth:`_batch` from drawn indices ``r [p, B]`` into the shards at ``offsets [p]`` (of the
        hosted peers ``rows``, local indices; None: all of them, in order); ``x_out``: where to
        gather the rows ``x`` (``[p · B, d]``, contiguous; default a new tensor)."""
        p, B = r.shape
        if self.padded is not None:
            x, y = self.padded
            if rows is not None:
                at = torch.from_numpy(rows).to(self.device)
                x, y = x[at], y[at]
            return x, y, self._draw_weights(r, x.shape[1])
        # (drawn on the CPU, moved: the same minibatches on any device; index_select: ~4x faster than x[idx])
        idx = torch.from_numpy(offsets[:, None] + r).reshape(-1).to(self.device)
        x = self.x_local.index_select(0, idx) if x_out is None else torch.index_select(self.x_local, 0, idx, out=x_out)
        return x.view(p, B, -1), self.y_local.index_select(0, idx).view(p, B)

    def _draw_weights(self, r: np.ndarray, pad: int) -> Tensor:
        """The padded path's sample weights ``[p, pad]``: each padded row's draw count in ``r [p, B]`` / B."""
        p, B = r.shape
        counts = torch.zeros(p, pad, device=self.device).scatter_add_(
            1, torch.from_numpy(r).to(self.device), torch.ones(p, B, device=self.device))
        return counts / B


class StepBatches:
    """A round's minibatches with every step's indices drawn (``draws [steps, p, B]``), read as
    :class:`fedsim.heads.PeerSlicedBatches`: iterating yields :meth:`MinibatchDraws._batch` of each
    step for all the hosted peers ``rows`` (fresh tensors, as before), :meth:`part` one step's batch
    of a chunk of them, its gathered rows written into :func:`fedsim.heads.kept_buffer`'s
    ``"batch"`` slot (no whole-group batch allocated and page-faulted in at every step)."""

    def __init__(self, group: MinibatchDraws, draws: np.ndarray, rows: np.ndarray | None) -> None:
        self.group, self.draws, self.rows = group, draws, rows
        self.steps = draws.shape[0]
        self.offsets = group.offsets if rows is None else group.offsets[rows]

    def __iter__(self) -> Iterator[tuple[Tensor, ...]]:
        return (self.group._rows_batch(self.draws[k], self.offsets, self.rows) for k in range(self.steps))

    def row_bytes(self) -> int:
        """Bytes :meth:`part` gathers per peer (0 on the padded path: views of the padded shards)."""
        g = self.group
        return 0 if g.padded is not None else self.draws.shape[2] * g.x_local[0].numel() * g.x_local.element_size()

    def part(self, step: int, lo: int, hi: int) -> tuple[Tensor, ...]:
        """Step ``step``'s batch of the peers ``lo .. hi - 1`` (of ``rows``): the rows of
        :meth:`MinibatchDraws._batch`'s batch, valid until the next call (the gathered ``x`` lives
        in the kept buffer)."""
        g, r = self.group, self.draws[step, lo:hi]
        rows = None if self.rows is None else self.rows[lo:hi]
        if g.padded is not None:
            x, y = g.padded
            if rows is None:  # views of the padded shards: no copy
                return x[lo:hi], y[lo:hi], g._draw_weights(r, x.shape[1])
            return g._rows_batch(r, self.offsets[lo:hi], rows)
        out = kept_empty((r.size, *g.x_local.shape[1:]), g.x_local.dtype, g.x_local.device, "batch")
        return g._rows_batch(r, self.offsets[lo:hi], rows, out)
