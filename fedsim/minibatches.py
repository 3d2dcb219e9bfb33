"""How a peer group draws its local steps' minibatches: each hosted peer's indices into its own
shard, from :mod:`fedsim.rng` keyed by round, step and global peer id (:meth:`MinibatchDraws._draw`),
all the steps of a round drawn in one call while they are few (:attr:`MinibatchDraws.DRAW_AT_ONCE`),
and the gathered (or, for small shards, count-weighted padded) batch (:meth:`MinibatchDraws._batch`).
Its methods were :class:`fedsim.peers.PeerGroup`'s, moved unchanged; :class:`~fedsim.peers.PeerGroup`
inherits them and sets up the state they read (declared below).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from fedsim import rng as crng

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
        they are at most :attr:`DRAW_AT_ONCE` numbers."""
        p = len(self.ids) if rows is None else len(rows)
        if steps * p * self.s.training.batch_size > self.DRAW_AT_ONCE:
            return (self._batch(round_, k, rows) for k in range(steps))
        draws = self._draw(round_, np.arange(steps)[:, None, None], rows)  # [steps, p, B]
        return (self._batch(round_, k, rows, draws[k]) for k in range(steps))

    def _batch(
        self, round_: int, step: int, rows: np.ndarray | None = None, r: np.ndarray | None = None
    ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """A local step's minibatch for every hosted peer: the gathered ``(x [p, B, d], y [p, B])``,
        or, for small shards (``s.shard_pad``), ``(x, y, weights)`` over the zero-padded shards with
        ``weights [p, shard_pad]`` = draw count / B (:func:`fedsim.heads.ce_grad`): the same
        gradient without copying a batch larger than the shards at every step. ``rows``: only those
        hosted peers (local indices). ``r``: the step's indices if already drawn (:meth:`_minibatches`)."""
        r = self._draw(round_, step, rows) if r is None else r
        p, B = r.shape
        offsets = self.offsets if rows is None else self.offsets[rows]
        if self.padded is not None:
            x, y = self.padded
            if rows is not None:
                at = torch.from_numpy(rows).to(self.device)
                x, y = x[at], y[at]
            counts = torch.zeros(p, x.shape[1], device=self.device).scatter_add_(
                1, torch.from_numpy(r).to(self.device), torch.ones(p, B, device=self.device))
            return x, y, counts / B
        # (drawn on the CPU, moved: the same minibatches on any device; index_select: ~4x faster than x[idx])
        idx = torch.from_numpy(offsets[:, None] + r).reshape(-1).to(self.device)
        return self.x_local.index_select(0, idx).view(p, B, -1), self.y_local.index_select(0, idx).view(p, B)
