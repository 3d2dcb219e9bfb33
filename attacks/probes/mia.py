"""Membership inference against a linear head on frozen features.

* :func:`loss_threshold_mia` — Yeom et al. 2018, "Privacy Risk in Machine Learning: Analyzing
  the Connection to Overfitting" (CSF). The attacker says "member" when the example's loss is
  at most ``τ``; its membership advantage is ``Adv = TPR(τ) − FPR(τ)`` and we report the best
  threshold's advantage ``max_τ TPR(τ) − FPR(τ)`` (the Kolmogorov–Smirnov distance between the
  two empirical loss distributions, one-sided), computed exactly by sorting.
* :func:`lira_offline_scores` / :func:`lira_offline_mia` — offline LiRA, Carlini et al. 2022,
  "Membership Inference Attacks From First Principles" (IEEE S&P), Algorithm 1 (offline
  variant): ``N`` shadow heads are trained on random halves of a public pool the target never
  saw (:func:`train_shadow_heads`), so every shadow is an *out* model for every queried example.
  For an example ``(x, y)`` the logit-scaled confidence ``φ = log(p_y/(1−p_y))`` of the out
  models is fitted with a Gaussian ``N(μ_out(x,y), σ²_out(x,y))`` and the target's ``φ_obs`` is
  scored by the one-sided test ``Λ = Φ((φ_obs − μ_out)/σ_out)`` (high ⇒ member).

Deviations: the shadows are linear heads trained by full-batch Adam on features (the backbone
is frozen and public, so this is the exact shadow of the Bristle setting, minus the target's
exact optimiser schedule); no data augmentation / query averaging (a linear head on fixed
features has nothing to augment); scores are returned as the z-statistic
``(φ_obs − μ_out)/σ_out``, a monotone transform of ``Λ`` that leaves every threshold metric
(advantage, AUC, TPR at fixed FPR) unchanged and does not saturate in float precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from attacks.probes._head import head_logits, logit_confidence, train_heads
from attacks.probes._records import Record


@dataclass
class MIAResult(Record):
    """Threshold metrics of a membership-inference attack (members vs. non-members).

    Attributes:
        attack: ``"loss_threshold"`` or ``"lira_offline"``.
        advantage: ``max_τ TPR(τ) − FPR(τ)`` ∈ [0, 1] (0: no better than chance).
        threshold: the score threshold achieving it (``+inf``/``None`` when the advantage is 0).
        auc: area under the ROC curve (ties count ½); 0.5 is chance.
        tpr_at_low_fpr: the largest TPR at FPR ≤ ``low_fpr`` (Carlini et al.'s headline metric).
        low_fpr: the FPR budget used above.
        n_members, n_nonmembers: sample sizes.
    """

    attack: str
    advantage: float
    threshold: float
    auc: float
    tpr_at_low_fpr: float
    low_fpr: float
    n_members: int
    n_nonmembers: int


def _roc_points(member_scores: Tensor, nonmember_scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ROC of the rule "member iff score ≥ τ" at every distinct score ``τ``.

    Returns ``(tpr, fpr, thresholds)``, one entry per distinct score in decreasing order, each
    point including all ties at that threshold, plus the starting point ``(0, 0, +inf)``.
    """
    m = member_scores.detach().reshape(-1).to(torch.float64).cpu()
    n = nonmember_scores.detach().reshape(-1).to(torch.float64).cpu()
    if m.numel() == 0 or n.numel() == 0:
        raise ValueError("need at least one member and one non-member score")
    if not (torch.isfinite(m).all() and torch.isfinite(n).all()):
        raise ValueError("scores must be finite")
    scores = torch.cat([m, n])
    is_member = torch.cat([torch.ones_like(m), torch.zeros_like(n)])
    order = torch.argsort(scores, descending=True, stable=True)
    s, lab = scores[order], is_member[order]
    tp, fp = torch.cumsum(lab, 0), torch.cumsum(1 - lab, 0)
    # last index of each tie group (scores sorted descending)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[:-1] != s[1:]
    inf = torch.tensor([float("inf")], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    tpr = torch.cat([zero, tp[last] / m.numel()])
    fpr = torch.cat([zero, fp[last] / n.numel()])
    return tpr, fpr, torch.cat([inf, s[last]])


def best_advantage(member_scores: Tensor, nonmember_scores: Tensor) -> tuple[float, float]:
    """``(max_τ TPR(τ) − FPR(τ), τ*)`` for "member iff score ≥ τ", exact over all thresholds.

    The trivial threshold ``τ = +inf`` (TPR = FPR = 0) is included, so the advantage is ≥ 0.
    """
    tpr, fpr, thr = _roc_points(member_scores, nonmember_scores)
    gap = tpr - fpr
    i = int(torch.argmax(gap))  # first maximiser: the strictest threshold achieving it
    return float(gap[i]), float(thr[i])


def roc_auc(member_scores: Tensor, nonmember_scores: Tensor) -> float:
    """``P(s_member > s_nonmember) + ½ P(tie)`` (Mann–Whitney U / (n_m n_n)), exact."""
    tpr, fpr, _ = _roc_points(member_scores, nonmember_scores)
    return float(torch.trapezoid(tpr, fpr))


def tpr_at_fpr(member_scores: Tensor, nonmember_scores: Tensor, fpr_budget: float = 0.01) -> float:
    """Largest TPR over thresholds whose FPR is at most ``fpr_budget``."""
    tpr, fpr, _ = _roc_points(member_scores, nonmember_scores)
    ok = fpr <= fpr_budget + 1e-12
    return float(tpr[ok].max())


def summarize_scores(member_scores: Tensor, nonmember_scores: Tensor, attack: str,
                     low_fpr: float = 0.01) -> MIAResult:
    """All threshold metrics of membership scores (higher score ⇒ "member")."""
    adv, thr = best_advantage(member_scores, nonmember_scores)
    return MIAResult(
        attack=attack,
        advantage=adv,
        threshold=thr,
        auc=roc_auc(member_scores, nonmember_scores),
        tpr_at_low_fpr=tpr_at_fpr(member_scores, nonmember_scores, low_fpr),
        low_fpr=low_fpr,
        n_members=int(member_scores.numel()),
        n_nonmembers=int(nonmember_scores.numel()),
    )


def loss_threshold_mia(member_losses: Tensor, nonmember_losses: Tensor) -> float:
    """Yeom et al. (2018) loss-threshold attack: best advantage ``max_τ TPR − FPR``.

    Predict "member" iff ``loss ≤ τ``; ``TPR(τ) = #{members with loss ≤ τ}/n_m`` and
    ``FPR(τ) = #{non-members with loss ≤ τ}/n_n``. Exact (sorting, ties handled as groups).
    Perfectly separated losses give 1.0, identical loss multisets give 0.0.
    """
    return best_advantage(-torch.as_tensor(member_losses), -torch.as_tensor(nonmember_losses))[0]


def loss_threshold_result(member_losses: Tensor, nonmember_losses: Tensor,
                          low_fpr: float = 0.01) -> MIAResult:
    """:func:`loss_threshold_mia` with AUC and TPR at low FPR (scores are negated losses)."""
    return summarize_scores(-torch.as_tensor(member_losses), -torch.as_tensor(nonmember_losses),
                            "loss_threshold", low_fpr)


@dataclass
class ShadowSet(Record):
    """Shadow heads for offline LiRA.

    Attributes:
        params: ``[N, P]`` trained shadow heads.
        in_mask: ``[N, n_pool]`` bool, which pool examples each shadow trained on.
        layer_shape, bias: the head layout.
    """

    params: Tensor = field(metadata={"json": False})
    in_mask: Tensor = field(metadata={"json": False})
    layer_shape: tuple[int, int] = (0, 0)
    bias: bool = True

    @property
    def num_shadows(self) -> int:
        return int(self.params.shape[0])


def train_shadow_heads(
    pool_x: Tensor,
    pool_y: Tensor,
    layer_shape: tuple[int, int],
    bias: bool = True,
    num_shadows: int = 16,
    *,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
) -> ShadowSet:
    """Train ``num_shadows`` heads, each on a random half of ``(pool_x, pool_y)``.

    Shadows come in complementary pairs (shadow ``2i+1`` trains on the half ``2i`` left out), so
    every pool example is *in* exactly half of the shadows when ``num_shadows`` is even (what
    online LiRA would need; offline LiRA only uses them as *out* models for the target's
    queries, which are never in the pool). Train them like the target was trained (same
    ``epochs``/``lr``/``weight_decay`` and a training-set size close to half the pool) so the
    out-distribution of ``φ`` matches the target's.
    """
    if num_shadows < 2:
        raise ValueError("num_shadows must be >= 2 to fit a Gaussian")
    n = pool_x.shape[0]
    masks = []
    for i in range(num_shadows):
        if i % 2 == 0:
            perm = torch.randperm(n, generator=generator, device="cpu")
            m = torch.zeros(n, dtype=torch.bool)
            m[perm[: n // 2]] = True
            masks.append(m)
        else:
            masks.append(~masks[-1])
    in_mask = torch.stack(masks).to(pool_x.device)
    params = train_heads(pool_x, layer_shape[0], y=pool_y, weights=in_mask.to(pool_x.dtype), bias=bias,
                         epochs=epochs, lr=lr, weight_decay=weight_decay)
    return ShadowSet(params=params, in_mask=in_mask, layer_shape=layer_shape, bias=bias)


def lira_offline_scores(
    params: Tensor,
    shadows: ShadowSet,
    x: Tensor,
    y: Tensor,
    *,
    fixed_variance: bool = False,
    min_std: float = 1e-4,
) -> Tensor:
    """Offline-LiRA membership scores ``(φ_obs − μ_out)/σ_out`` for examples ``(x, y)`` ``[m]``.

    ``φ = z_y − logsumexp_{j≠y} z_j`` (logit-scaled confidence); ``μ_out, σ_out`` are the mean and
    (unbiased) standard deviation of ``φ`` under the ``N`` shadow heads, per example, or with one
    variance pooled over all examples when ``fixed_variance`` (Carlini et al. recommend it for
    few shadow models). Higher ⇒ more likely a member.
    """
    x = x.to(shadows.params.dtype)
    phi_obs = logit_confidence(head_logits(params, x, shadows.layer_shape, shadows.bias), y)
    phi_out = logit_confidence(head_logits(shadows.params, x, shadows.layer_shape, shadows.bias), y)
    mu = phi_out.mean(0)
    var = phi_out.var(0, unbiased=True)
    if fixed_variance:
        var = var.mean().expand_as(var)
    return (phi_obs - mu) / var.sqrt().clamp_min(min_std)


def lira_offline_mia(
    params: Tensor,
    shadows: ShadowSet,
    member_x: Tensor,
    member_y: Tensor,
    nonmember_x: Tensor,
    nonmember_y: Tensor,
    *,
    fixed_variance: bool = False,
    low_fpr: float = 0.01,
) -> MIAResult:
    """Offline LiRA on ``params``: members vs. non-members → :class:`MIAResult`."""
    sm = lira_offline_scores(params, shadows, member_x, member_y, fixed_variance=fixed_variance)
    sn = lira_offline_scores(params, shadows, nonmember_x, nonmember_y, fixed_variance=fixed_variance)
    return summarize_scores(sm, sn, "lira_offline", low_fpr)
