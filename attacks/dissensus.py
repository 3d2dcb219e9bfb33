"""The dissensus attack on decentralized gossip (per receiver)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks._math import repeat_rows
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.params import Real, param


@register("dissensus")
@dataclass
class Dissensus(UpdateForger):
    """Dissensus: push each receiver away from its honest neighbours (per receiver).

    For receiver ``i`` with vector ``x_i`` (``ctx.receiver_own``), honest neighbours ``H_i``
    (``ctx.receiver_neighbors``) and ``k`` Byzantine neighbours (the ``k`` rows of ``own``),
    every Byzantine neighbour sends the same vector::

        x_b = x_i − ε · Σ_{j ∈ H_i} (x_j − x_i) / k

    so that gossip averaging with uniform weights moves ``x_i`` by ``−ε`` times its honest pull
    (``ε = 1`` cancels it, ``ε > 1`` reverses it). This is He, Karimireddy, Jaggi, "Byzantine-
    robust decentralized learning via ClippedGossip", 2022 (dissensus attack,
    ``x_i − ε_i Σ_{j∈H_i} W_ij (x_j − x_i) / Σ_{b∈B_i} W_ib``) with all mixing weights equal;
    the paper sweeps ``ε``.

    Omniscient and per receiver (``per_receiver = True``): the engine calls ``forge`` once per
    honest receiver with ``ctx.receiver_own`` (``[P]``) and ``ctx.receiver_neighbors``
    (``[h, P]``, that receiver's honest neighbours; ``honest`` is used when it is None), and
    ``own`` holding only the rows of the Byzantine peers adjacent to that receiver.
    """

    omniscient = True
    per_receiver = True

    eps: float = param(1.0, Real(lo=0, lo_open=True))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.receiver_own is None:
            raise ValueError(f"{self.name}: needs ctx.receiver_own (the receiving peer's vector)")
        x_i = ctx.receiver_own
        neigh = ctx.receiver_neighbors if ctx.receiver_neighbors is not None else honest
        k = own.shape[0]
        if k == 0:
            return own.clone()
        pull = (neigh - x_i).sum(dim=0) if neigh.numel() else x_i.new_zeros(x_i.shape)
        return repeat_rows(x_i - self.eps * pull / k, k)
