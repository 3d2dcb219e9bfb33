"""Bucketing, a pre-aggregation that composes with any registered rule."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedlib.params import Boolean, Integer, param
from strategies._compose import PreAggregator, inner_field, inner_params_field
from strategies._math import check_f, f64, to_like
from strategies.base import AggregationContext
from strategies.registry import register


def bucket_means(x: Tensor, s: int, generator: torch.Generator) -> Tensor:
    """Means of the buckets of a random permutation of the rows of ``x [n, P]``: rows
    ``π(1..s)``, ``π(s+1..2s)``, ...; ``⌈n/s⌉`` buckets, the last one smaller when ``s ∤ n``."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator).to(x.device)
    shuffled = f64(x)[perm]
    full = n // s
    means = shuffled[: full * s].reshape(full, s, x.shape[1]).mean(dim=1)
    if full * s < n:
        means = torch.cat([means, shuffled[full * s :].mean(dim=0, keepdim=True)])
    return means


@register("bucketing")
@dataclass
class Bucketing(PreAggregator):
    """Bucketing (Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
    Bucketing", ICLR 2022, Alg. 1; ByzFL's ``Bucketing`` pre-aggregator).

    The received vectors are put in a random order ``π`` (drawn from the rule's seeded generator,
    ``ctx.generator``), split into ``⌈n/s⌉`` buckets of ``s`` consecutive vectors (the last one
    smaller when ``s`` does not divide ``n``), and each bucket is replaced by its mean
    ``y_i = (1/s) Σ_{k=(i−1)s+1}^{min(is, n)} x_{π(k)}``; the bucket means go to the ``inner`` rule
    (built from the registry with ``inner_params``) with the same ``f`` (a Byzantine vector
    spoils at most one bucket). ``s = 1`` is the inner rule on the received vectors in a random
    order.

    Parameters: ``s`` (bucket size >= 1; the paper uses 2), ``inner``/``inner_params``,
    ``include_own`` (default True, passed down as the inner rule's ``include_own`` unless
    ``inner_params`` sets it). ``check`` is the inner rule's with ``⌈n/s⌉`` received vectors;
    what the engine reads of the rule follows the inner rule (:class:`strategies._compose.PreAggregator`:
    ``needs`` plus ``generator``, ``exchanges``, Bristle's consolidated weights, ``reads_f``, ...). An
    inner rule that reads each sender's class overlap is refused (a bucket mean is no sender's).

    Departure: the own vector is never put in a bucket (it is a peer's own model, or the
    federated server's global model); it reaches the inner rule unchanged, which counts it when
    its ``include_own`` is true. ByzFL buckets all its inputs (the server's setting, include_own
    false, is the same).
    """

    exchanges = "full_model"  # instances follow the inner rule (PreAggregator.__post_init__)
    step_needs = frozenset({"generator"})  # (the random bucket order)
    step_reads_f = False  # f only reaches the inner rule
    mixes = "means of buckets of senders in a random order"

    s: int = param(2, Integer(minimum=1))
    inner: str = inner_field()
    inner_params: dict[str, Any] = inner_params_field()
    include_own: bool = param(True, Boolean())

    def check(self, n: int, f: int) -> None:
        check_f(f)
        buckets = math.ceil(n / self.s)
        try:
            self._inner.check(buckets, f)
        except ValueError as e:
            raise ValueError(f"bucketing (s={self.s}: {buckets} bucket means from {n} vectors): {e}") from None

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        if ctx.generator is None:
            raise ValueError("bucketing: needs the rule's random generator (ctx.generator)")
        means = to_like(bucket_means(received, self.s, ctx.generator), received)
        return self._inner(own, means, ctx)
