"""Membership inference that stands against a null (issue 17, part 2).

Every membership number here is reported beside the distribution it would have if training on
the members changed nothing:

* **Advantage with a threshold fixed in advance** (:func:`crossfit_advantage`). The best
  threshold ``τ* = argmax_τ TPR(τ) − FPR(τ)`` (Yeom et al. 2018) picked on the data it is scored
  on is biased upward (it is the maximum of many noisy differences). Here members and
  non-members are each split at random into two folds; ``τ`` is chosen on one fold and
  ``TPR − FPR`` is measured on the other, both ways, and averaged (cross-fitting). Under the null
  its expectation is ≤ 0.
* **Permutation null** (:func:`membership_test`): the member/non-member labels of the pooled
  scores are permuted ``B`` times and the whole statistic (folds, threshold choice, scoring) is
  recomputed; ``null_q95`` is the 95% quantile and ``p = (1 + #{null ≥ observed}) / (1 + B)``
  (Phipson & Smyth 2010: never 0).
* **Class-matched null** (optional, for natural data whose class mix differs from the held-out
  data's): the non-members are split at random into halves ``A`` and ``B``; pseudo-members are
  drawn from ``A`` with the members' class *proportions* (``min(n_members, |A|)`` of them, with
  replacement within a class), and scored against ``B`` (the held-out class mix, as the real
  non-members). Its 95% quantile and p-value show how much advantage the class prior alone
  produces. Smaller samples than the real test make this null somewhat wider (conservative).
* **TPR at a fixed low FPR** (Carlini et al. 2022, "Membership Inference Attacks From First
  Principles"): the non-members are split in a *calibration* half, whose ``(1 − α)`` quantile is
  the threshold (``FPR ≤ α`` on calibration), and an *evaluation* half, on which the realised FPR
  is measured; TPR is measured on all members (never used to pick the threshold). Both come
  with exact Clopper–Pearson 95% intervals (:func:`clopper_pearson`). With ``m`` calibration
  non-members, ``α < 1/m`` is not resolvable: the threshold is then the calibration maximum
  (``resolvable: false`` in the record).
* **LiRA** (Carlini et al. 2022, Algorithm 1) from shadow confidences (:func:`lira_scores`):
  ``φ = log(p_y / (1 − p_y))`` of each queried example under shadow heads trained with and
  without it. Online: ``log N(φ_obs; μ_in, σ²_in) − log N(φ_obs; μ_out, σ²_out)``; offline:
  ``(φ_obs − μ_out) / σ_out`` (a monotone transform of the one-sided test). ``μ`` is always per
  example (the per-example calibration that makes LiRA work); ``σ`` is pooled over examples
  (the paper's "fixed variance") when there are fewer than ``fixed_variance_below`` (64, the
  paper's recommendation) shadows per side.

Departures: the cross-fitted advantage replaces the in-sample ``max_τ`` advantage of
:mod:`attacks.probes.mia` (which stays available for comparison); the class-matched null is
ours (the review's check made a procedure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attacks.probes._records import Record
from attacks.probes.mia import best_advantage, roc_auc


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper–Pearson) two-sided ``level`` interval for a binomial proportion ``k/n``.

    Solved by bisection on the binomial tail sums (``log``-space pmf via ``lgamma``), so it needs
    no SciPy: ``lo`` solves ``P(X ≥ k | lo) = (1−level)/2`` and ``hi`` solves ``P(X ≤ k | hi) =
    (1−level)/2``; ``lo = 0`` when ``k = 0`` and ``hi = 1`` when ``k = n``.
    """
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    a = (1 - level) / 2
    ks = np.arange(n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in ks])

    def cdf_le(p: float, kk: int) -> float:  # P(X <= kk | p)
        if p <= 0:
            return 1.0
        if p >= 1:
            return 1.0 if kk >= n else 0.0
        lp = logc[: kk + 1] + ks[: kk + 1] * math.log(p) + (n - ks[: kk + 1]) * math.log1p(-p)
        return float(np.exp(lp).sum())

    def solve(f, target: float) -> float:  # f decreasing in p
        lo_p, hi_p = 0.0, 1.0
        for _ in range(80):
            mid = 0.5 * (lo_p + hi_p)
            if f(mid) > target:
                lo_p = mid
            else:
                hi_p = mid
        return 0.5 * (lo_p + hi_p)

    lo = 0.0 if k == 0 else solve(lambda p: -(1 - cdf_le(p, k - 1)), -a)  # P(X >= k) increasing in p
    hi = 1.0 if k == n else solve(lambda p: cdf_le(p, k), a)
    return lo, hi


def _rates_at(member: Tensor, nonmember: Tensor, tau: float) -> tuple[float, float]:
    """``(TPR, FPR)`` of "member iff score ≥ τ"."""
    return float((member >= tau).to(torch.float64).mean()), float((nonmember >= tau).to(torch.float64).mean())


def crossfit_advantage(member: Tensor, nonmember: Tensor, generator: torch.Generator | None = None) -> float:
    """Two-fold cross-fitted advantage: ``τ`` from one fold, ``TPR − FPR`` on the other, averaged.

    Needs at least 2 members and 2 non-members. Higher score ⇒ "member".
    """
    m, n = member.reshape(-1).to(torch.float64), nonmember.reshape(-1).to(torch.float64)
    if m.numel() < 2 or n.numel() < 2:
        raise ValueError("cross-fitting needs at least 2 members and 2 non-members")
    pm = torch.randperm(m.numel(), generator=generator)
    pn = torch.randperm(n.numel(), generator=generator)
    mf = (m[pm[: m.numel() // 2]], m[pm[m.numel() // 2 :]])
    nf = (n[pn[: n.numel() // 2]], n[pn[n.numel() // 2 :]])
    total = 0.0
    for fit, score in ((0, 1), (1, 0)):
        _, tau = best_advantage(mf[fit], nf[fit])
        tpr, fpr = _rates_at(mf[score], nf[score], tau)
        total += tpr - fpr
    return total / 2


def tpr_at_fixed_fpr(member: Tensor, nonmember_cal: Tensor, nonmember_eval: Tensor,
                     fpr: float) -> dict[str, object]:
    """TPR (on ``member``) and realised FPR (on ``nonmember_eval``) at the threshold that keeps the
    calibration non-members' FPR ≤ ``fpr``; each with its Clopper–Pearson 95% interval."""
    cal = torch.sort(nonmember_cal.reshape(-1).to(torch.float64), descending=True).values
    allowed = int(math.floor(fpr * cal.numel() + 1e-9))  # calibration non-members allowed above τ
    tau = float(cal[allowed]) if allowed < cal.numel() else float("-inf")
    # "member iff score > cal[allowed]": at most `allowed` calibration non-members exceed it
    k_tp = int((member.reshape(-1) > tau).sum())
    k_fp = int((nonmember_eval.reshape(-1) > tau).sum())
    nm, ne = member.numel(), nonmember_eval.numel()
    return {
        "fpr_target": fpr, "threshold": tau, "resolvable": allowed >= 1,
        "tpr": k_tp / nm, "tpr_ci": list(clopper_pearson(k_tp, nm)),
        "fpr": k_fp / ne, "fpr_ci": list(clopper_pearson(k_fp, ne)),
    }


@dataclass
class MembershipTest(Record):
    """One membership-inference attack scored against its nulls (see the module docstring).

    Attributes:
        attack: what produced the scores (e.g. ``"loss_threshold"``, ``"lira_online"``).
        data: ``"canaries"`` or ``"natural"``.
        advantage: cross-fitted ``TPR − FPR`` (threshold chosen on the other fold).
        null_mean, null_q95: mean and 95% quantile of the permutation null of ``advantage``.
        p_value: one-sided permutation p-value ``(1 + #{null ≥ advantage}) / (1 + permutations)``.
        class_matched_q95, class_matched_p_value: the class-matched null (``None`` if not run).
        significant: ``p_value < 0.01`` and, when run, ``class_matched_p_value < 0.01``.
        auc: ROC AUC (threshold-free; in-sample, for orientation only).
        tpr_at_1pct_fpr, tpr_at_1pct_fpr_ci: TPR at the calibrated 1% FPR threshold and its 95% CI.
        tpr_at_0_1pct_fpr, tpr_at_0_1pct_fpr_ci: the same at 0.1%.
        low_fpr: the two fixed-FPR records in full (threshold, realised FPR and its CI, resolvable).
        n_members, n_nonmembers, permutations: sizes.
    """

    attack: str
    data: str
    advantage: float
    null_mean: float
    null_q95: float
    p_value: float
    class_matched_q95: float | None
    class_matched_p_value: float | None
    significant: bool
    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci: list[float]
    tpr_at_0_1pct_fpr: float
    tpr_at_0_1pct_fpr_ci: list[float]
    low_fpr: list[dict[str, object]]
    n_members: int
    n_nonmembers: int
    permutations: int


def _class_matched_draw(member_y: Tensor, pool_y: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """``size`` indices into ``pool_y`` (with replacement) whose classes follow ``member_y``'s proportions."""
    classes = [c for c in torch.unique(member_y).tolist() if bool((pool_y == c).any())]
    if not classes:
        raise ValueError("no non-member shares a class with the members: no class-matched null")
    counts = torch.tensor([float((member_y == c).sum()) for c in classes])
    which = torch.multinomial(counts / counts.sum(), size, replacement=True, generator=gen)
    picks = torch.empty(size, dtype=torch.long)
    for j, c in enumerate(classes):
        sel = which == j
        pool = torch.nonzero(pool_y == c).reshape(-1)
        picks[sel] = pool[torch.randint(pool.numel(), (int(sel.sum()),), generator=gen)]
    return picks


def membership_test(
    member_scores: Tensor,
    nonmember_scores: Tensor,
    *,
    attack: str,
    data: str,
    permutations: int = 999,
    generator: torch.Generator | None = None,
    member_y: Tensor | None = None,
    nonmember_y: Tensor | None = None,
    class_permutations: int = 200,
) -> MembershipTest:
    """Score an attack (higher score ⇒ member) against the permutation null, and the class-matched
    null when ``member_y``/``nonmember_y`` are given (see the module docstring)."""
    m = member_scores.detach().reshape(-1).to(torch.float64).cpu()
    n = nonmember_scores.detach().reshape(-1).to(torch.float64).cpu()
    if not (torch.isfinite(m).all() and torch.isfinite(n).all()):
        raise ValueError(f"{attack}: membership scores must be finite")
    if n.numel() < 4 or m.numel() < 2:
        raise ValueError(f"{attack}: need at least 2 members and 4 non-members, got {m.numel()} and {n.numel()}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    obs = crossfit_advantage(m, n, gen)
    pooled = torch.cat([m, n])
    null = np.empty(permutations)
    for b in range(permutations):
        perm = pooled[torch.randperm(pooled.numel(), generator=gen)]
        null[b] = crossfit_advantage(perm[: m.numel()], perm[m.numel() :], gen)
    p = (1 + int((null >= obs - 1e-12).sum())) / (1 + permutations)
    cq95 = cp = None
    if member_y is not None and nonmember_y is not None:
        cnull = np.empty(class_permutations)
        ny = nonmember_y.reshape(-1)
        for b in range(class_permutations):
            split = torch.randperm(n.numel(), generator=gen)
            a_idx, b_idx = split[: n.numel() // 2], split[n.numel() // 2 :]
            size = min(m.numel(), a_idx.numel())
            pick = a_idx[_class_matched_draw(member_y.reshape(-1), ny[a_idx], size, gen)]
            cnull[b] = crossfit_advantage(n[pick], n[b_idx], gen)
        cq95 = float(np.quantile(cnull, 0.95))
        cp = (1 + int((cnull >= obs - 1e-12).sum())) / (1 + class_permutations)
    half = torch.randperm(n.numel(), generator=gen)
    cal, ev = n[half[: n.numel() // 2]], n[half[n.numel() // 2 :]]
    low = [tpr_at_fixed_fpr(m, cal, ev, a) for a in (0.01, 0.001)]
    return MembershipTest(
        attack=attack, data=data, advantage=obs, null_mean=float(null.mean()),
        null_q95=float(np.quantile(null, 0.95)), p_value=p, class_matched_q95=cq95, class_matched_p_value=cp,
        significant=bool(p < 0.01 and (cp is None or cp < 0.01)), auc=roc_auc(m, n),
        tpr_at_1pct_fpr=float(low[0]["tpr"]), tpr_at_1pct_fpr_ci=list(low[0]["tpr_ci"]),  # type: ignore[arg-type]
        tpr_at_0_1pct_fpr=float(low[1]["tpr"]), tpr_at_0_1pct_fpr_ci=list(low[1]["tpr_ci"]),  # type: ignore[arg-type]
        low_fpr=low, n_members=int(m.numel()), n_nonmembers=int(n.numel()), permutations=permutations,
    )


def lira_scores(
    phi_obs: Tensor,
    phi_shadow: Tensor,
    in_mask: Tensor,
    *,
    online: bool,
    fixed_variance_below: int = 64,
    min_std: float = 1e-4,
) -> Tensor:
    """LiRA scores of ``m`` queried examples from their shadow confidences.

    Args:
        phi_obs: ``[m]`` the target's ``φ`` on each example.
        phi_shadow: ``[S, m]`` each shadow's ``φ`` on each example.
        in_mask: ``[S, m]`` bool, whether the shadow trained on the example.
        online: likelihood ratio of the in and out Gaussians (needs in and out shadows for every
            example); else offline, ``(φ_obs − μ_out)/σ_out`` from the out shadows only.
        fixed_variance_below: pool ``σ`` over examples when the fewest per-example in (online)
            or out shadows is below this (Carlini et al.: fixed variance for < 64 shadows).
        min_std: floor on ``σ``.
    """
    phi_shadow = phi_shadow.to(torch.float64)
    phi_obs = phi_obs.to(torch.float64)
    out = (~in_mask).to(torch.float64)
    inn = in_mask.to(torch.float64)

    def moments(w: Tensor) -> tuple[Tensor, Tensor, int]:
        k = w.sum(0)
        if bool((k < 2).any()):
            raise ValueError("every example needs at least 2 shadows on each side it is scored against")
        mu = (w * phi_shadow).sum(0) / k
        var = (w * (phi_shadow - mu) ** 2).sum(0) / (k - 1)
        return mu, var, int(k.min())

    mu_o, var_o, k_o = moments(out)
    if not online:
        if k_o < fixed_variance_below:
            var_o = var_o.mean().expand_as(var_o)
        return (phi_obs - mu_o) / var_o.sqrt().clamp_min(min_std)
    mu_i, var_i, k_i = moments(inn)
    if min(k_i, k_o) < fixed_variance_below:
        var_i = var_i.mean().expand_as(var_i)
        var_o = var_o.mean().expand_as(var_o)
    sd_i, sd_o = var_i.sqrt().clamp_min(min_std), var_o.sqrt().clamp_min(min_std)

    def logpdf(x: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
        return -0.5 * ((x - mu) / sd) ** 2 - torch.log(sd)

    return logpdf(phi_obs, mu_i, sd_i) - logpdf(phi_obs, mu_o, sd_o)


def train_heads_sgd(
    x: Tensor,
    y: Tensor,
    in_mask: Tensor,
    num_classes: int,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    bias: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``S`` heads trained at once by minibatch SGD with heavy-ball momentum (PyTorch's convention,
    as fedsim's peers train), each on its own subset ``in_mask [S, n]`` of ``(x, y)``: per step a
    batch of ``batch_size`` examples drawn without replacement from the subset. Heads start at 0.

    Returns ``[S, P]`` (weights row-major, then biases).
    """
    s, n = in_mask.shape
    d = x.shape[1]
    x = x.to(torch.float64)
    w = torch.zeros(s, num_classes, d, dtype=torch.float64)
    b = torch.zeros(s, num_classes, dtype=torch.float64)
    mw, mb = torch.zeros_like(w), torch.zeros_like(b)
    probs = in_mask.to(torch.float64)
    k = min(batch_size, int(in_mask.sum(1).min()))
    for _ in range(steps):
        idx = torch.multinomial(probs, k, replacement=False, generator=generator)  # [S, k]
        xb, yb = x[idx], y[idx]  # [S, k, d], [S, k]
        z = torch.bmm(xb, w.transpose(1, 2)) + (b[:, None, :] if bias else 0)
        g = torch.softmax(z, -1)
        g.scatter_add_(-1, yb[..., None], -torch.ones_like(g[..., :1]))
        g /= k
        gw = torch.bmm(g.transpose(1, 2), xb) + weight_decay * w
        gb = g.sum(1)
        mw.mul_(momentum).add_(gw)
        mb.mul_(momentum).add_(gb)
        w -= lr * mw
        if bias:
            b -= lr * mb
    flat = w.reshape(s, -1)
    return torch.cat([flat, b], 1) if bias else flat
