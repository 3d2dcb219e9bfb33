"""Adaptive Robust Clipping, a pre-aggregation that composes with any registered rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from fedlib.params import Boolean, param
from strategies._compose import PreAggregator, inner_field, inner_params_field
from strategies._math import check_f, clip_rows, f64, runtime_f, to_like
from strategies.base import AggregationContext
from strategies.registry import register


def arc_count(n: int, f: int) -> int:
    """``k = ⌊2 · (f/n) · (n − f)⌋``, the number of vectors ARC clips (exact integer floor)."""
    return (2 * f * (n - f)) // n if n > 0 else 0


def arc_clip(u: Tensor, f: int) -> tuple[Tensor, int, float]:
    """Clip the ``k = arc_count(n, f)`` largest-norm rows of ``u [n, P]`` to the norm of the
    ``(k+1)``-th largest. Returns ``(clipped rows, k, threshold)`` (threshold ``inf`` when k = 0)."""
    n = u.shape[0]
    k = arc_count(n, f)
    if k == 0:
        return u, 0, float("inf")
    norms = torch.linalg.vector_norm(u, dim=1)
    tau = float(torch.sort(norms, descending=True).values[k])
    return clip_rows(u, tau), k, tau


@register("arc")
@dataclass
class AdaptiveRobustClipping(PreAggregator):
    """ARC, Adaptive Robust Clipping (Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "Boosting
    Robustness by Clipping Gradients in Distributed Learning", arXiv 2405.14432, 2024, later "The
    Vital Role of Gradient Clipping in Byzantine-Resilient Distributed Learning"; ByzFL's ``ARC``).

    With ``n`` received vectors and ``k = ⌊2 · (f/n) · (n − f)⌋``, the ``k`` inputs of largest norm
    are clipped to the norm of the ``(k+1)``-th largest, ``u_i ← u_i · min(1, τ/||u_i||)`` with
    ``τ = ||u_{π(k+1)}||`` (``π`` sorts by non-increasing norm); the others are unchanged. The
    result goes to the ``inner`` rule (built from the registry with ``inner_params``) with the same
    ``f``. ``f = 0`` clips nothing.

    Parameters: ``inner``/``inner_params``, ``include_own`` (default True, passed down as the inner
    rule's ``include_own`` unless ``inner_params`` sets it). ``check`` is the inner rule's; what the
    engine reads of the rule follows the inner rule (:class:`strategies._compose.PreAggregator`:
    ``needs``, ``exchanges``, Bristle's consolidated weights, ...); row ``i`` the inner rule gets is
    sender ``i``'s, so per-sender context (Bristle's class overlap) still applies. At run time ``f``
    is clamped to ``n − 1``.

    Departures: the paper clips gradients; the vectors here are models, so ARC clips the updates
    ``u_i = x_i − own`` (own: the peer's model, or the federated server's global model, so on the
    server these are the clients' updates) and the inner rule gets ``own + clip(u_i)``; own itself
    is never clipped nor counted in ``n``. ``k`` is computed in exact integer arithmetic (ByzFL's
    float product can round ``⌊·⌋`` one down).
    """

    exchanges = "full_model"  # instances follow the inner rule (PreAggregator.__post_init__)

    inner: str = inner_field()
    inner_params: dict[str, Any] = inner_params_field()
    include_own: bool = param(True, Boolean())

    def check(self, n: int, f: int) -> None:
        check_f(f)
        self._inner.check(n, f)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        o = f64(own)
        clipped, _, _ = arc_clip(f64(received) - o, runtime_f(ctx, received.shape[0]))
        return self._inner(own, to_like(o + clipped, received), ctx)
