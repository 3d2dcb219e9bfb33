"""Distance-based selection: Krum, Multi-Krum and Bulyan.

All three run over a *population* of ``N`` vectors: ``[own; received]`` (``N = n + 1``) when
``include_own`` (the default, as in the decentralized variants, e.g. He et al. 2022's DeKrum),
or ``received`` only (``N = n``, the federated server's setting). The own vector is honest, so
the Byzantine count stays ``f`` and ``check`` applies the papers' conditions to ``N``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedlib.params import Boolean, Integer, param
from strategies._math import (
    check_population,
    coordinate_median,
    krum_order,
    pairwise_sq_dists,
    population,
    population_size,
    runtime_f,
    to_like,
)
from strategies.base import AggregationContext, Strategy
from strategies.registry import register


@register("krum")
@dataclass
class Krum(Strategy):
    """Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent", NeurIPS 2017).

    ``s(i) = Σ_{j ∈ N_i} ||x_i − x_j||²`` where ``N_i`` are the ``N − f − 2`` vectors closest to
    ``x_i``; the result is ``x_{i*}`` with ``i* = argmin_i s(i)`` (ties: own first, then sender
    order). Requires ``N > 2f + 2``.

    The paper aggregates gradients; selecting one of the received *models* is the same rule on
    parameters (the selected vector is returned as is, no ``own + update`` needed because
    selection commutes with translation by ``own``).

    ``include_own`` (default True): the own vector is a candidate and a neighbour, ``N = n + 1``.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)

    include_own: bool = param(True, Boolean())
    # g peers at once: each peer's distances, scores and choice, as per peer (f depends on n only)
    call_is_batched = True
    # the batched form is for engine.device: on a CPU the per-peer loop was faster (docs/performance.md)
    batch_on_cpu = False

    def _size(self, n: int) -> int:
        return population_size(n, self.include_own)

    def check(self, n: int, f: int) -> None:
        check_population(self.name, n, f, self.include_own, 2 * f + 2, "2f + 2", strict=True)

    def _selected(self, x: Tensor, f: int) -> Tensor:
        """Indices ``[..., m]`` of the selected vectors among ``x [..., N, P]``."""
        return krum_order(pairwise_sq_dists(x), f)[..., :1]

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        x = population(own, received, self.include_own)  # [..., N, P]: leading dims batch peers
        f = runtime_f(ctx, x.shape[-2])
        idx = self._selected(x, f)
        return to_like(torch.take_along_dim(x, idx[..., None], dim=-2).mean(dim=-2), own)


@register("multikrum")
@dataclass
class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al., NeurIPS 2017, Sec. 5): the mean of the ``m`` vectors with the
    lowest Krum scores ``s(i)`` (see ``krum``); ``m = N − f`` by default (``m=None``).

    ``include_own`` (default True): the own vector is a candidate and a neighbour, ``N = n + 1``.
    Requires ``N > 2f + 2`` and, when ``m`` is given, ``m <= N``. At run time ``m`` is clamped to
    the vectors that arrived.
    """

    m: int | None = param(None, Integer(minimum=1, null=True, what="an integer >= 1 or null (N - f)"))

    def check(self, n: int, f: int) -> None:
        super().check(n, f)
        if self.m is not None and self.m > self._size(n):
            raise ValueError(f"m: must be <= the number of candidates {self._size(n)}, got {self.m}")

    def _selected(self, x: Tensor, f: int) -> Tensor:
        size = x.shape[-2]
        m = size - f if self.m is None else self.m
        return krum_order(pairwise_sq_dists(x), f)[..., : max(1, min(m, size))]


@register("bulyan")
@dataclass
class Bulyan(Strategy):
    """Bulyan (El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed Learning in
    Byzantium", ICML 2018).

    1. Selection: ``θ = N − 2f`` times, pick the Krum winner of the remaining vectors (Krum with
       the same ``f`` over the shrinking set) and move it to ``S``.
    2. Aggregation, coordinate-wise: with ``β = θ − 2f``, average the ``β`` values of ``S`` closest
       to the coordinate-wise median of ``S``.

    Requires ``N >= 4f + 3``. ``include_own`` (default True): ``N = n + 1`` including the own
    vector. At run time (fewer arrivals) ``θ`` and ``β`` are clamped to at least 1.

    Krum ties go to the lower index (own, then sender order). For ``f`` = 1 or 2 the last picks run
    Krum on ``f + 3`` or fewer vectors, i.e. with one neighbour (``N − f − 2`` clamped to at least
    1): the two mutually nearest vectors then tie, so which one enters ``S`` (and the result)
    depends on the sender order. The paper leaves such ties open.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)

    include_own: bool = param(True, Boolean())

    def check(self, n: int, f: int) -> None:
        check_population("bulyan", n, f, self.include_own, 4 * f + 3, "4f + 3")

    def select(self, x: Tensor, f: int) -> list[int]:
        """Step 1: the ``θ = N − 2f`` rows of ``x`` picked by repeated Krum, in picking order
        (Krum ties go to the lower index of the remaining rows, i.e. own, then sender order)."""
        sq = pairwise_sq_dists(x)
        remaining = list(range(x.shape[0]))
        chosen = []
        for _ in range(max(1, x.shape[0] - 2 * f)):
            idx = torch.tensor(remaining, device=sq.device)
            best = int(krum_order(sq[idx][:, idx], f)[0])
            chosen.append(remaining.pop(best))
        return chosen

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        x = population(own, received, self.include_own)
        f = runtime_f(ctx, x.shape[0])
        s = x[self.select(x, f)]
        beta = max(1, s.shape[0] - 2 * f)
        med = coordinate_median(s)
        closest = torch.topk((s - med).abs(), beta, dim=0, largest=False).indices
        return to_like(s.gather(0, closest).mean(dim=0), own)
