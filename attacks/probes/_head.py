"""Tiny linear-head helpers for the probes (no dependency on ``fedsim`` or ``strategies``).

A head is a flattened vector ``θ = [vec(W), b]`` with ``W ∈ R^{C×d}`` stored row-major and
an optional bias ``b ∈ R^C``; its logits on features ``x ∈ R^d`` are ``z = W x + b``: the one
layout of :mod:`fedlib.heads` (``num_params``, ``flatten``, ``unflatten`` are re-exported here).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional

from fedlib.heads import flatten, num_params, unflatten

__all__ = ["accuracy", "ce_gradient", "ce_losses", "flatten", "head_logits", "logit_confidence", "num_params",
           "train_heads", "unflatten"]


def head_logits(params: Tensor, x: Tensor, layer_shape: tuple[int, int], bias: bool) -> Tensor:
    """Logits ``x Wᵀ + b``: ``params [P]`` → ``[m, C]``; ``params [k, P]`` → ``[k, m, C]``."""
    w, b = unflatten(params.to(x.dtype), layer_shape, bias)
    out = torch.matmul(x, w.transpose(-1, -2))
    if b is not None:
        out = out + b.unsqueeze(-2)
    return out


def ce_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy ``ℓ_i = logsumexp(z_i) − z_{i,y_i}`` for logits ``[..., m, C]``."""
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return lse - picked


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose argmax equals ``y`` (``nan`` for an empty set)."""
    if y.numel() == 0:
        return float("nan")
    return float((logits.argmax(-1) == y).to(torch.float64).mean())


def logit_confidence(logits: Tensor, y: Tensor) -> Tensor:
    """Logit-scaled confidence ``φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j``.

    Computed without forming ``p_y`` so it stays exact for confident models (Carlini et al.
    2022, "Membership Inference Attacks From First Principles", §IV-B).
    """
    yy = y.expand(*logits.shape[:-1]).unsqueeze(-1)
    picked = logits.gather(-1, yy).squeeze(-1)
    others = logits.scatter(-1, yy, float("-inf"))
    return picked - torch.logsumexp(others, dim=-1)


def ce_gradient(params: Tensor, x: Tensor, y: Tensor, layer_shape: tuple[int, int], bias: bool) -> Tensor:
    """Gradient of the mean cross-entropy of one head on ``(x, y)``, in closed form.

    With ``G = (softmax(Z) − onehot(y)) / n`` (``[n, C]``): ``∂L/∂W = Gᵀ X`` and ``∂L/∂b = Σ_i G_i``.
    """
    z = head_logits(params, x, layer_shape, bias)
    g = (torch.softmax(z, dim=-1) - functional.one_hot(y, layer_shape[0]).to(z.dtype)) / max(x.shape[0], 1)
    gw = g.transpose(0, 1) @ x
    return flatten(gw, g.sum(0) if bias else None).to(params.dtype)


def train_heads(
    x: Tensor,
    num_classes: int,
    *,
    y: Tensor | None = None,
    soft_targets: Tensor | None = None,
    weights: Tensor | None = None,
    bias: bool = True,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    init: Tensor | None = None,
) -> Tensor:
    """Train ``N`` linear heads at once by full-batch Adam on one shared feature matrix.

    Head ``k`` minimises ``Σ_i w_{ki} ℓ(z_{ki}, t_i) / Σ_i w_{ki} + (λ/2)‖W_k‖²`` where ``ℓ`` is
    cross-entropy against hard labels ``y`` or soft targets ``t`` (``[n, C]`` rows summing to 1;
    equal to the KL divergence up to a constant). ``weights [N, n]`` (0/1 masks give each head its
    own subset, e.g. LiRA's random halves); ``None`` trains one head on everything.
    Heads start at ``init [N, P]`` or zero, so the result is deterministic.

    Returns ``[N, P]`` (``N = 1`` when ``weights`` is ``None``).
    """
    if (y is None) == (soft_targets is None):
        raise ValueError("give exactly one of y (labels) or soft_targets")
    n, d = x.shape
    w_mask = torch.ones(1, n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x.dtype)
    n_heads = w_mask.shape[0]
    shape = (num_classes, d)
    theta = (torch.zeros(n_heads, num_params(shape, bias), dtype=x.dtype, device=x.device)
             if init is None else init.detach().clone().to(x.dtype).reshape(n_heads, -1))
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    denom = w_mask.sum(1).clamp_min(1.0)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            z = head_logits(theta, x, shape, bias)  # [N, n, C]
            if y is not None:
                per = ce_losses(z, y)
            else:
                per = -(soft_targets * torch.log_softmax(z, dim=-1)).sum(-1)
            loss = ((per * w_mask).sum(1) / denom).sum()
            if weight_decay:
                wt, _ = unflatten(theta, shape, bias)
                loss = loss + 0.5 * weight_decay * wt.pow(2).sum()
            loss.backward()
            opt.step()
    return theta.detach()
