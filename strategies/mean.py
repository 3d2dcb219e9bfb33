"""Plain averaging and the local-only reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedlib.params import Boolean, param
from strategies._math import WORK, f64, population, to_like
from strategies.base import AggregationContext, Strategy
from strategies.registry import register


@register("fedavg")
@dataclass
class FedAvg(Strategy):
    """FedAvg / plain mean: ``x = (own + Σ_j x_j) / (n + 1)`` (McMahan et al., AISTATS 2017).

    With ``include_own=False`` (the federated server's setting) the own vector is left out:
    ``x = mean_j x_j``.
    """
    exchanges = "full_model"  # what a message carries (byte accounting)

    include_own: bool = param(True, Boolean())  # "false" (a string) would be truthy

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        return self._mean(own, received)

    def aggregate_batch(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        return self._mean(own, received, reuse=False)

    def _mean(self, own: Tensor, received: Tensor, reuse: bool = True) -> Tensor:
        """``own [..., P]``, ``received [..., n, P]`` → ``[..., P]``. float64: a float32 sum of
        values near the float32 limit overflows although the mean does not. ``reuse``: the float64
        copy in :meth:`_work_copy`'s buffer (one call per round, the server's); not for a gossip
        group's batches, whose shapes change from chunk to chunk (no reuse) and whose buffer would
        stay allocated between rounds, outside the memory estimate."""
        if self.include_own or not reuse:
            return to_like(population(own, received, self.include_own).mean(dim=-2), own)
        return to_like(self._work_copy(received).mean(dim=-2), own)

    def _work_copy(self, received: Tensor) -> Tensor:
        """``received`` in float64 (what :func:`~strategies._math.population` gives without the own
        vector: the same values, shape and strides, so the same mean), written into a buffer this
        rule keeps while the shape lasts: the federated server's call every round, where a fresh
        float64 copy of ``[N, P]`` (46 MB at N = 1,000) page-faulted 11,000 times and took 2.4× the
        conversion's time (docs/performance.md, "Where an in-process round goes")."""
        buf = self.__dict__.get("_work")  # not a dataclass field: no parameter, no repr, no equality
        if buf is None or buf.shape != received.shape or buf.stride() != received.stride() \
                or buf.device != received.device:
            buf = torch.empty_like(received, dtype=WORK)
            if buf.stride() != received.stride():  # not dense: a fresh copy, as population makes
                return f64(received)
            self.__dict__["_work"] = buf
        return buf.copy_(received)


@register("local")
@dataclass
class LocalOnly(Strategy):
    """No aggregation: keep the own model (the "local training only" reference)."""
    exchanges = "full_model"  # what a message carries (byte accounting)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        return own.clone()
