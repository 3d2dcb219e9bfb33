"""Coordinate-wise statistics: median and trimmed mean (Yin, Chen, Ramchandran, Bartlett,
"Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018).

Both run over ``[own; received]`` (``N = n + 1``) when ``include_own`` (default, as the
decentralized variants DeCM/DeTM of He et al. 2022), else over ``received`` (``N = n``, the
federated server). The papers aggregate gradients; a coordinate-wise median/trimmed mean commutes
with translation by ``own``, so applying it to the models equals ``own + rule(received − own)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from fedlib.params import Boolean, Real, param
from strategies._math import (
    check_f,
    check_population,
    coordinate_median,
    coordinate_trimmed_mean,
    population,
    population_label,
    population_size,
    runtime_f,
    to_like,
)
from strategies.base import AggregationContext, Strategy
from strategies.errors import CannotAggregateError
from strategies.registry import register


@register("median")
@dataclass
class Median(Strategy):
    """Coordinate-wise median (Yin et al., ICML 2018): ``x_k = median_i x_{i,k}``; for an even
    ``N`` the mean of the two middle values. Requires an honest majority, ``N >= 2f + 1``.
    ``include_own`` (default True): the median runs over ``N = n + 1`` vectors including own."""
    exchanges = "full_model"  # what a message carries (byte accounting)

    include_own: bool = param(True, Boolean())

    float64_input = True  # reads received through population (float64): a caller's scratch serves
    call_is_batched = True  # g peers at once: the same sort per peer
    # the batched form is for engine.device: on a CPU the per-peer loop was faster (docs/performance.md)
    batch_on_cpu = False

    def check(self, n: int, f: int) -> None:
        check_population("median", n, f, self.include_own, 2 * f + 1, "2f + 1")

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        return to_like(coordinate_median(population(own, received, self.include_own)), own)


@register("trimmed_mean")
@dataclass
class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (Yin et al., ICML 2018, Def. 2): per coordinate, drop the ``b``
    largest and ``b`` smallest of the ``N`` values and average the other ``N − 2b``.

    ``b = floor(beta · N)`` when ``beta`` is given (``0 <= beta < 0.5``; the paper's β-trimmed
    mean), else ``b = f``. Requires ``N > 2b`` and, for robustness, ``b >= f`` (the paper needs
    ``β >= f/N``). ``include_own`` (default True): ``N = n + 1`` including the own vector. At run
    time ``b`` is clamped to ``(N − 1) // 2``.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)

    beta: float | None = param(None, Real(lo=0.0, hi=0.5, hi_open=True, null=True))
    include_own: bool = param(True, Boolean())

    float64_input = True  # reads received through population (float64): a caller's scratch serves
    call_is_batched = True  # g peers at once (b depends on n only, the same for every peer of a batch)
    # the batched form is for engine.device: on a CPU the per-peer loop was faster (docs/performance.md)
    batch_on_cpu = False

    def _b(self, size: int, f: int) -> int:
        return f if self.beta is None else int(math.floor(self.beta * size))

    def check(self, n: int, f: int) -> None:
        check_f(f)
        size = population_size(n, self.include_own)
        b = self._b(size, f)
        if size <= 2 * b:
            who = population_label(self.include_own)
            raise CannotAggregateError(f"trimmed_mean needs {who} > 2f, got {size} <= {2 * b}")
        if b < f:
            raise ValueError(f"beta: trims b = floor(beta * {size}) = {b} per side, fewer than f = {f}; "
                             f"need beta >= {f / size:.3g}")

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        x = population(own, received, self.include_own)  # [..., N, P]: leading dims batch peers
        size = x.shape[-2]
        return to_like(coordinate_trimmed_mean(x, self._b(size, runtime_f(ctx, size))), own)
