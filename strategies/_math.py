"""Shared tensor helpers of the aggregation rules (private: not a rule module).

Numerics: the rules receive finite float32 vectors (``sanitize`` drops NaN/Inf senders) whose
entries may still be huge (up to ~3.4e38). Squared distances of such vectors overflow float32,
and ``torch.cdist``'s default matmul formula turns ``inf - inf`` into NaN, so every rule does its
arithmetic in float64 (:func:`f64`) and casts the result back to the caller's dtype. Output
layers are small (``C·d`` parameters), so this costs little.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import one_hot

from fedlib.distances import krum_scores as _krum_kernel
from fedlib.distances import sq_dists
from fedlib.params import Integer, require
from strategies.base import AggregationContext, head_logits
from strategies.errors import CannotAggregateError

WORK = torch.float64


# --------------------------------------------------------------------------- parameters


def check_f(f: int) -> None:
    """``check(n, f)``'s own argument: ``ValueError("f: must be an integer >= 0, ...")`` otherwise."""
    require("f", f, Integer(minimum=0))


# --------------------------------------------------------------------------- populations


def f64(t: Tensor) -> Tensor:
    return t.to(WORK)


def to_like(x: Tensor, like: Tensor, *, inplace: bool = False) -> Tensor:
    """Cast a float64 result back to ``like``'s dtype, saturating at that dtype's finite range
    (``inplace``: the saturation overwrites ``x``, a scratch the caller no longer needs).

    Only rules whose result can leave the inputs' hull (Bristle's zero-mean step, FLTrust's
    rescaling, clipping steps) can exceed it, and only for inputs near the float32 limit; a
    saturated value is still a valid (if extreme) parameter, whereas ``inf`` would make
    ``aggregate`` discard the whole aggregation.
    """
    if like.dtype.is_floating_point:  # (a float32 ``x`` for float64 ``like``: its own range, the narrower)
        big = torch.finfo(like.dtype).max
        if x.dtype.is_floating_point:
            big = min(big, torch.finfo(x.dtype).max)
        x = x.clamp_(-big, big) if inplace else x.clamp(-big, big)
    return x.to(like.dtype)


def population(own: Tensor, received: Tensor, include_own: bool) -> Tensor:
    """The vectors a robust statistic runs over: ``[own; received]`` or ``received`` (float64),
    stacked along dim -2 (``own [..., P]``, ``received [..., n, P]``: leading dims batch peers)."""
    x = f64(received)
    return torch.cat([f64(own)[..., None, :], x], dim=-2) if include_own else x


def population_size(n: int, include_own: bool) -> int:
    return n + (1 if include_own else 0)


def population_label(include_own: bool) -> str:
    """How a limit message names the population size: ``"n + 1 (received + own)"`` or ``"n (received)"``."""
    return "n + 1 (received + own)" if include_own else "n (received)"


def check_population(rule: str, n: int, f: int, include_own: bool, need: int, bound: str, *,
                     strict: bool = False) -> int:
    """A rule's ``check(n, f)`` on its population: :func:`check_f`, then ``N`` (the population size)
    must be ``>= need`` (``> need`` when ``strict``), ``bound`` naming ``need`` in terms of ``f``
    (``"2f + 1"``), else ``CannotAggregateError("<rule> needs n + 1 (received + own) >= 2f + 1, got
    4 < 5")``. Returns ``N``."""
    check_f(f)
    size = population_size(n, include_own)
    if size <= need if strict else size < need:
        op, neg = (">", "<=") if strict else (">=", "<")
        who = population_label(include_own)
        raise CannotAggregateError(f"{rule} needs {who} {op} {bound}, got {size} {neg} {need}")
    return size


def runtime_f(ctx: AggregationContext, size: int) -> int:
    """``ctx.f`` clamped to ``[0, size - 1]``.

    ``check(n, f)`` is validated once per scenario against the nominal ``n``; at run time fewer
    vectors can arrive (``sanitize`` drops non-finite senders), so the rules degrade by clamping
    their counts instead of raising mid-run.
    """
    return max(0, min(int(ctx.f), max(size - 1, 0)))


# --------------------------------------------------------------------------- distances


def pairwise_sq_dists(x: Tensor) -> Tensor:
    """``D[..., i, j] = ||x_i - x_j||²`` for ``x [..., N, P]`` (leading dims batch; float64,
    difference form: no cancellation)."""
    x = f64(x)
    return sq_dists(x[None], x[None])[0]


def dists_to(x: Tensor, v: Tensor) -> Tensor:
    """``||x_i - v||`` for ``x [N, P]``, ``v [P]`` (float64)."""
    return torch.linalg.vector_norm(f64(x) - f64(v), dim=-1)


def nearest(dist: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` smallest entries of ``dist [N]`` (stable: ties keep index order)."""
    return torch.sort(dist, stable=True).indices[:k]


def clip_rows(v: Tensor, tau: float | Tensor) -> Tensor:
    """``clip_τ(v_i) = v_i · min(1, τ / ||v_i||)`` row-wise (``0`` stays ``0``)."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    scale = torch.where(norm > tau, tau / norm.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(norm))
    return v * scale


# --------------------------------------------------------------------------- Krum family


def krum_order(sq: Tensor, f: int) -> Tensor:
    """Indices ``[..., N]`` sorted by Krum score (``sq [..., N, N]``: pairwise squared distances), best
    first; ties go to the lower index. The neighbour count ``N - f - 2`` is clamped to ``[1, N - 1]`` (runtime
    degrade, :func:`fedlib.distances.krum_scores`)."""
    return torch.sort(_krum_kernel(sq, f, degrade=True), dim=-1, stable=True).indices


# --------------------------------------------------------------------------- coordinate-wise


def coordinate_median(x: Tensor) -> Tensor:
    """Coordinate-wise median of ``x [..., N, P]`` (leading dims batch peers) → ``[..., P]``; the
    mean of the two middle values when N is even."""
    s = torch.sort(x, dim=-2).values
    n = x.shape[-2]
    return 0.5 * (s[..., (n - 1) // 2, :] + s[..., n // 2, :])


def coordinate_trimmed_mean(x: Tensor, b: int) -> Tensor:
    """Coordinate-wise mean of ``x [..., N, P]`` after removing the ``b`` largest and ``b`` smallest
    values → ``[..., P]``."""
    n = x.shape[-2]
    b = max(0, min(b, (n - 1) // 2))
    return torch.sort(x, dim=-2).values[..., b : n - b, :].mean(dim=-2)


# --------------------------------------------------------------------------- validation scores


def validation_logits(params: Tensor, ctx: AggregationContext, rule: str) -> tuple[Tensor, Tensor]:
    """Logits ``[k, m, C]`` (float64) of heads ``params [k, P]`` on ``ctx.val_x`` and the labels;
    of whole models through ``ctx.val_logits`` when the engine gives it."""
    if ctx.val_logits is not None and ctx.val_y is not None:
        return f64(ctx.val_logits(params)), ctx.val_y.to(params.device).long()
    if ctx.val_x is None or ctx.val_y is None:
        raise ValueError(f"{rule}: needs the local validation set (ctx.val_x, ctx.val_y)")
    x = f64(ctx.val_x.to(params.device))
    return head_logits(f64(params), x, ctx.layer_shape, ctx.bias), ctx.val_y.to(params.device).long()


def _confusion(logits: Tensor, y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Per class: true positives and predictions ``[..., k, C]`` of the argmax predictions, and
    the samples of each class ``[..., 1, C]`` (float64 counts; padding counts for nothing)."""
    c = logits.shape[-1]
    pred = one_hot(logits.argmax(dim=-1), c).to(WORK)  # [..., k, m, C]
    true = one_hot(y, c).to(WORK)  # [..., m, C]
    if mask is not None:
        true = true * mask.to(WORK)[..., None]
        pred = pred * mask.to(WORK)[..., None, :, None]
    tp = (pred * true[..., None, :, :]).sum(dim=-2)
    return tp, pred.sum(dim=-2), true.sum(dim=-2)[..., None, :]


def per_class_f1(logits: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-class F1 ``2TP / (2TP + FP + FN)`` of argmax predictions; ``[..., k, m, C]`` → ``[..., k, C]``.

    ``y [..., m]`` are the labels; ``mask [..., m]`` (optional, bool) marks the real samples of a
    zero-padded validation set (padding counts for nothing). A class never predicted and absent
    from ``y`` (0/0) scores 0.
    """
    tp, predicted, actual = _confusion(logits, y, mask)
    denom = predicted + actual
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))


def per_class_recall(logits: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-class recall ``TP / (TP + FN)`` of argmax predictions (over all ``C`` classes, so a
    sample predicted as any other class is a miss); ``[..., k, m, C]`` → ``[..., k, C]``. Inputs as
    :func:`per_class_f1`; a class absent from ``y`` scores 0."""
    tp, _, actual = _confusion(logits, y, mask)
    return torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))


PER_CLASS_METRICS = {"f1": per_class_f1, "recall": per_class_recall}


def mean_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy of each head: ``[k, m, C]`` → ``[k]`` (0 on an empty validation set)."""
    k, m, c = logits.shape
    if m == 0:
        return torch.zeros(k, dtype=logits.dtype, device=logits.device)
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, y[None, :, None].expand(k, m, 1)).squeeze(-1).mean(dim=1)
