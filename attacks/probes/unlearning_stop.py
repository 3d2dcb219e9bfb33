"""The unlearning ascent's membership stopping statistic (:func:`attacks.probes.unlearn_gradient_ascent`,
``criterion="membership"``; :mod:`attacks.probes.unlearning`).

``criterion="membership"`` (not a class-prior match, and blind to a few high-loss outliers
such as planted canaries, which push the *mean* forget loss above ``L_R`` before any step and
stop the ``"loss"`` rule at step 0): the forget set's per-example losses ``ℓ_F`` are compared
with the reference set's ``ℓ_R`` by the one-sided, class-matched two-sample Kolmogorov–Smirnov
statistic

    D⁺(θ) = max_t [ F̂_F(t) − Ĝ_R(t) ],   F̂_F(t) = (1/n_F) Σ_{i∈F} 1[ℓ_i ≤ t],
    Ĝ_R(t) = Σ_{k∈R} w_k 1[ℓ_k ≤ t],  w_k = π_F(y_k) / m_R(y_k)

(``π_F(c)`` the forget set's class share, ``m_R(c)`` the reference count of class ``c``:
the reference is re-weighted to the forget set's class mix, so lowering the losses of the
forget set's frequent classes — moving the class prior — is not mistaken for forgetting;
forget examples of classes absent from ``R`` are dropped). ``D⁺`` is the in-sample
loss-threshold membership advantage ``max_t TPR − FPR``. The ascent stops at the first step
with ``D⁺ ≤ c_α`` — the membership signal has reached its null level — where

    c_α = sqrt( ln(1/α) / 2 · (1/n_F + 1/m_eff) ),   m_eff = (Σ w_k)² / Σ w_k²  (Kish),

the asymptotic one-sided KS critical value at level ``α`` (``alpha``; Smirnov 1939). The
crossing step is bisected to the smallest ``α_step`` (to 1e-6 of a step) with ``D⁺ ≤ c_α``.
Neither rule looks at the retrained model (the unlearner does not have it).

``forget_strata`` / ``reference_strata`` replace the class labels in ``π_F`` and ``m_R`` (not
in the losses): the reference is then re-weighted to the forget set's mix of *strata*. The
harness passes ``class + C·[canary]`` when the reference holds held-out canaries, so the forget
set's planted canaries are matched with canaries the model never saw, and its natural examples
with natural ones, class by class (a stratum of the forget set absent from the reference is
dropped, as a class is).

``forget_groups`` / ``reference_groups`` (a departure, ours) test groups separately instead of
pooling them: ``D⁺_g`` and ``c_{α/G,g}`` within each of the ``G`` groups present in the forget
set (still stratum-matched within the group; Bonferroni level ``α/G``), and the criterion
reports the group with the largest excess ``D⁺_g − c_g`` (so ``D⁺ ≤ c_α`` holds iff every group
is at its null level). Why: in the pooled statistic a group holding a share ``s`` of the forget
set moves ``D⁺`` by at most ``s`` — 50 planted canaries among 866 examples can add at most 0.058,
less than the null level, however strongly they are remembered.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def membership_statistic(forget_losses: Tensor, forget_y: Tensor, reference_losses: Tensor,
                         reference_y: Tensor, alpha: float = 0.05) -> tuple[float, float]:
    """Class-matched one-sided KS statistic ``D⁺`` and its null threshold ``c_α`` (formulas in
    the module docstring) → ``(D⁺, c_α)``; ``D⁺ ≤ c_α``: no membership signal at level ``α``.
    ``forget_y``/``reference_y`` are only used to match the two sets: any non-negative integer
    strata (e.g. ``class + C·[canary]``) work."""
    lf = forget_losses.detach().to(torch.float64).reshape(-1)
    lr_ = reference_losses.detach().to(torch.float64).reshape(-1)
    ncls = int(max(int(forget_y.max()), int(reference_y.max()))) + 1
    m_c = torch.bincount(reference_y.reshape(-1), minlength=ncls).to(torch.float64)
    keep = m_c[forget_y.reshape(-1)] > 0  # forget examples of classes absent from R are dropped
    lf, yf = lf[keep], forget_y.reshape(-1)[keep]
    n_f = int(lf.numel())
    if n_f == 0:
        raise ValueError("no forget example has a class present in the reference set")
    pi_f = torch.bincount(yf, minlength=ncls).to(torch.float64) / n_f
    w_r = pi_f[reference_y.reshape(-1)] / m_c[reference_y.reshape(-1)].clamp_min(1.0)
    # F̂_F − Ĝ_R at every observed loss: sort the union, cumulative weights, ties as groups
    vals = torch.cat([lf, lr_])
    wts = torch.cat([torch.full((n_f,), 1.0 / n_f, dtype=torch.float64), -w_r])
    order = torch.argsort(vals, stable=True)
    v, c = vals[order], torch.cumsum(wts[order], 0)
    last = torch.ones_like(v, dtype=torch.bool)
    last[:-1] = v[1:] != v[:-1]  # the CDFs are evaluated after the last of a group of ties
    d_plus = max(float(c[last].max()), 0.0)
    m_eff = float(w_r.sum() ** 2 / (w_r**2).sum().clamp_min(1e-300))
    thr = math.sqrt(math.log(1.0 / alpha) / 2.0 * (1.0 / n_f + 1.0 / max(m_eff, 1e-300)))
    return d_plus, thr


def grouped_membership_statistic(forget_losses: Tensor, forget_strata: Tensor, forget_groups: Tensor,
                                 reference_losses: Tensor, reference_strata: Tensor, reference_groups: Tensor,
                                 alpha: float = 0.05) -> tuple[float, float]:
    """:func:`membership_statistic` within each group of the forget set at level ``α/G``
    (Bonferroni over the ``G`` groups it holds) → ``(D⁺_g, c_g)`` of the group with the largest
    ``D⁺_g − c_g``; ``D⁺ ≤ c`` iff every group is at its null level. A forget group absent from the
    reference raises ``ValueError``."""
    fg, rg = forget_groups.reshape(-1), reference_groups.reshape(-1)
    groups = torch.unique(fg).tolist()
    worst: tuple[float, float] | None = None
    for g in groups:
        f, r = fg == g, rg == g
        if not bool(r.any()):
            raise ValueError(f"group {g} of the forget set has no reference examples")
        d, c = membership_statistic(forget_losses.reshape(-1)[f], forget_strata.reshape(-1)[f],
                                    reference_losses.reshape(-1)[r], reference_strata.reshape(-1)[r],
                                    alpha / len(groups))
        if worst is None or d - c > worst[0] - worst[1]:
            worst = (d, c)
    assert worst is not None
    return worst


def stopping_statistic(forget_losses: Tensor, forget_strata: Tensor, reference_losses: Tensor,
                       reference_strata: Tensor, alpha: float = 0.05, forget_groups: Tensor | None = None,
                       reference_groups: Tensor | None = None) -> tuple[float, float]:
    """The membership stopping rule's ``(D⁺, c)``: one pooled :func:`membership_statistic`, or with
    groups (both or neither) :func:`grouped_membership_statistic`. The one place both the ascent
    and the harness's check compute it, so both paths call ``membership_statistic`` through this
    module (a test swaps it here)."""
    if (forget_groups is None) != (reference_groups is None):
        raise ValueError("give both forget_groups and reference_groups, or neither")
    if forget_groups is None:
        return membership_statistic(forget_losses, forget_strata, reference_losses, reference_strata, alpha)
    return grouped_membership_statistic(forget_losses, forget_strata, forget_groups, reference_losses,
                                        reference_strata, reference_groups, alpha)  # type: ignore[arg-type]
