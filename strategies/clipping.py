"""Clipping rules: Centered Clipping and ClippedGossip (self-centered clipping).

Both bound what any single sender can move the result: a clipped difference has norm <= τ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedlib.params import Boolean, Integer, Real, param
from strategies._math import (
    check_f,
    clip_rows,
    dists_to,
    f64,
    population,
    to_like,
)
from strategies.base import AggregationContext, Strategy
from strategies.registry import register


@register("centered_clipping")
@dataclass
class CenteredClipping(Strategy):
    """Centered Clipping (Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
    Optimization", ICML 2021, Eq. 2):

    ``v_0 = own``; ``v_{l+1} = v_l + (1/N) Σ_i clip_τ(x_i − v_l)`` for ``l < iterations``, with
    ``clip_τ(z) = z · min(1, τ/||z||)``; the result is ``v_L``.

    The paper centres at the previous aggregate of momentum-averaged gradients; here the vectors
    are models and the centre is the peer's own model (the decentralized DeClipping of He et al.
    2022 does the same), so ``||v_L − own|| <= L·τ`` whatever the senders do, and each Byzantine
    sender moves each iteration by at most ``τ/N``.

    ``include_own`` (default True): ``x_i`` ranges over ``[own; received]``, ``N = n + 1``; else
    over ``received``, ``N = n``. ``tau`` is in parameter units: tune it to the typical distance
    between honest models.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    tau: float = param(1.0, Real(lo=0.0, lo_open=True))
    iterations: int = param(1, Integer(minimum=1))
    include_own: bool = param(True, Boolean())
    call_is_batched = True  # g peers at once: each row's norm and clip, each peer's mean, as per peer
    # the batched form is for engine.device: on a CPU the per-peer loop was faster (docs/performance.md)
    batch_on_cpu = False

    def check(self, n: int, f: int) -> None:
        check_f(f)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        x = population(own, received, self.include_own)  # [..., N, P]: leading dims batch peers
        v = f64(own)
        for _ in range(self.iterations):
            v = v + clip_rows(x - v[..., None, :], self.tau).mean(dim=-2)
        return to_like(v, own)


@register("clipped_gossip")
@dataclass
class ClippedGossip(Strategy):
    """ClippedGossip / self-centered clipping (He, Karimireddy, Jaggi, "Byzantine-robust
    decentralized learning via ClippedGossip", arXiv 2202.01545, 2022):

    ``x = own + Σ_j w_j · clip_τ(x_j − own)`` with uniform gossip weights ``w_j = 1/(n + 1)``
    (the own vector keeps weight ``1/(n+1)``; its clipped difference is 0).

    ``tau``: a fixed radius, or ``None`` (default) for the adaptive choice. The paper picks τ_i so
    that the total gossip weight of the clipped neighbours matches the Byzantine weight; with
    uniform weights and ``f = ctx.f`` that is: τ = the ``(f+1)``-th largest distance
    ``||x_j − own||``, so the ``f`` farthest neighbours are clipped to it. The authors' code
    (epfml/byzantine-robust-decentralized-optimizer, ``SelfCenteredClipping``) hard-codes f = 1
    (τ = second largest distance, no clipping with one neighbour); for ``f >= n`` we use τ = 0
    (own is kept) where the code would not clip.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)

    tau: float | None = param(None, Real(lo=0.0, null=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau is not None:  # a fixed radius: f is not read
            self.reads_f = False

    def check(self, n: int, f: int) -> None:
        check_f(f)

    def radius(self, own: Tensor, received: Tensor, f: int) -> float:
        """The clipping radius τ for this aggregation (see the class docstring)."""
        if self.tau is not None:
            return float(self.tau)
        n = received.shape[0]
        if f >= n:
            return 0.0
        return float(torch.sort(dists_to(received, own), descending=True).values[f])

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        n = received.shape[0]
        f = max(0, int(ctx.f))
        tau = self.radius(own, received, f)
        o = f64(own)
        out = o + clip_rows(f64(received) - o, tau).sum(dim=0) / (n + 1)
        return to_like(out, own)

