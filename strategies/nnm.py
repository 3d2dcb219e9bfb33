"""Nearest-Neighbour Mixing, a pre-aggregation that composes with any registered rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedlib.params import Boolean, param
from strategies._compose import PreAggregator, inner_field, inner_params_field
from strategies._math import (
    check_f,
    pairwise_sq_dists,
    population,
    population_size,
    runtime_f,
    to_like,
)
from strategies.base import AggregationContext
from strategies.errors import CannotAggregateError
from strategies.registry import register


@register("nnm")
@dataclass
class NearestNeighborMixing(PreAggregator):
    """Nearest-Neighbour Mixing (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing
    by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023, Alg. 1).

    Every vector ``y_i`` of the population (``N`` vectors) is replaced by the mean of its
    ``N − f`` nearest vectors (Euclidean, itself included), then the mixed vectors go to the
    ``inner`` rule (built from the registry with ``inner_params``), which decides on its own
    whether it counts the own vector.

    ``include_own`` (default True): the population is ``[own; received]`` and the own vector is
    mixed too (the inner rule gets the mixed own); with False only the received vectors are mixed
    (``N = n``) and ``own`` reaches the inner rule unchanged (use this for inner rules that treat
    ``own`` as a trusted reference: fltrust, mozi, balance, bristle, clipping centres).
    What the engine reads of the rule follows the inner rule (:class:`strategies._compose.PreAggregator`:
    ``needs``, ``exchanges``, Bristle's consolidated weights, ...); ``check`` is the inner rule's. An
    inner rule that reads each sender's class overlap is refused (a mixed row is no sender's).
    """

    exchanges = "full_model"  # instances follow the inner rule (PreAggregator.__post_init__)
    mixes = "means of each vector's N − f nearest"
    passes_include_own = False  # the inner rule keeps its own include_own

    inner: str = inner_field()
    inner_params: dict[str, Any] = inner_params_field()
    include_own: bool = param(True, Boolean())

    def check(self, n: int, f: int) -> None:
        check_f(f)
        size = population_size(n, self.include_own)
        if f >= size:
            raise CannotAggregateError(f"nnm needs more vectors than f to mix, got {size} <= f = {f}")
        self._inner.check(n, f)

    def mix(self, x: Tensor, f: int) -> Tensor:
        """``y_i ← mean of the N − f nearest y_j`` (itself included) for every row of ``x [N, P]``."""
        size = x.shape[0]
        k = max(1, size - f)
        idx = pairwise_sq_dists(x).argsort(dim=1, stable=True)[:, :k]
        weights = torch.zeros(size, size, dtype=x.dtype, device=x.device).scatter_(1, idx, 1.0 / k)
        return weights @ x

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        x = population(own, received, self.include_own)
        mixed = to_like(self.mix(x, runtime_f(ctx, x.shape[0])), own)
        if self.include_own:
            return self._inner(mixed[0], mixed[1:], ctx)
        return self._inner(own, mixed, ctx)
