"""Plain averaging and the local-only reference."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fedlib.params import Boolean, param
from strategies._math import population, to_like
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
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    include_own: bool = param(True, Boolean())  # "false" (a string) would be truthy

    float64_input = True  # reads received through population (float64): a caller's scratch serves
    call_is_batched = True  # g peers at once: each peer's mean

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        """``own [..., P]``, ``received [..., n, P]`` → ``[..., P]``. float64: a float32 sum of
        values near the float32 limit overflows although the mean does not."""
        return to_like(population(own, received, self.include_own).mean(dim=-2), own)


@register("local")
@dataclass
class LocalOnly(Strategy):
    """No aggregation: keep the own model (the "local training only" reference)."""
    exchanges = "full_model"  # what a message carries (byte accounting)
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        return own.clone()
