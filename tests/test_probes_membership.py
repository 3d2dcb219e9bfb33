"""Membership inference against a null (attacks.probes.membership): each test plants an effect
(or none) in synthetic scores and holds a broken variant of the method (a *mutant*, written here)
beside the real one, so the test fails if the method degrades into the mutant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.probes import (
    best_advantage,
    clopper_pearson,
    crossfit_advantage,
    lira_scores,
    membership_test,
    tpr_at_fixed_fpr,
    train_heads_sgd,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [
    (0, 50, 0.0, 0.071122), (3, 50, 0.012549, 0.165482), (50, 50, 0.928878, 1.0), (17, 40, 0.270429, 0.591099),
    (1, 1000, 2.5e-05, 0.005559),
])
def test_clopper_pearson_matches_beta_quantiles(k: int, n: int, lo: float, hi: float) -> None:
    # reference values: scipy.stats.beta.ppf(0.025, k, n-k+1) and beta.ppf(0.975, k+1, n-k)
    got = clopper_pearson(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)


def test_clopper_pearson_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="0 <= k <= n"):
        clopper_pearson(5, 3)


def test_planted_effect_is_detected_and_null_control_is_not() -> None:
    g = _gen(1)
    nonmembers = torch.randn(1000, generator=g)
    planted = torch.randn(50, generator=g) + 2.0  # training lowered the members' loss by 2σ
    control = torch.randn(50, generator=g)  # no membership at all
    hit = membership_test(planted, nonmembers, attack="t", data="synthetic", permutations=499, generator=_gen(2))
    miss = membership_test(control, nonmembers, attack="t", data="synthetic", permutations=499, generator=_gen(2))
    assert hit.p_value < 0.01 and hit.advantage > hit.null_q95 and hit.significant
    assert hit.tpr_at_1pct_fpr_ci[0] > 0.05  # far above the 1% a blind attacker gets
    assert miss.p_value > 0.05 and miss.advantage < miss.null_q95 and not miss.significant
    assert miss.tpr_at_1pct_fpr_ci[0] <= 0.01 <= miss.tpr_at_1pct_fpr_ci[1] + 0.05
    assert 0.0 <= miss.null_q95 < 0.2 and abs(miss.null_mean) < 0.05


def test_threshold_fixed_in_advance_is_not_biased_upward() -> None:
    """Mutant: the threshold picked on the scored data (``best_advantage``, the old probe) reports a
    positive advantage under the null; the cross-fitted one is centred at 0."""
    insample, crossfit = [], []
    for s in range(40):
        g = _gen(100 + s)
        m, n = torch.randn(50, generator=g), torch.randn(200, generator=g)
        insample.append(best_advantage(m, n)[0])
        crossfit.append(crossfit_advantage(m, n, g))
    assert np.mean(insample) > 0.07  # the mutant: biased upward (E[one-sided KS] ≈ 0.1 here)
    assert abs(np.mean(crossfit)) < 0.02 and np.mean(insample) - np.mean(crossfit) > 0.06


def test_tpr_at_fixed_fpr_uses_calibration_threshold() -> None:
    g = _gen(3)
    cal, ev = torch.randn(1000, generator=g), torch.randn(1000, generator=g)
    members = torch.randn(200, generator=g) + 3.0
    r = tpr_at_fixed_fpr(members, cal, ev, 0.01)
    assert r["resolvable"] and r["fpr_ci"][0] <= 0.01 <= r["fpr_ci"][1]  # realised FPR on data not used
    assert r["tpr_ci"][0] < r["tpr"] < r["tpr_ci"][1] and r["tpr"] > 0.5
    assert not tpr_at_fixed_fpr(members, cal[:50], ev, 0.001)["resolvable"]  # 0.1% of 50: below resolution


def test_class_matched_null_catches_a_class_prior_effect() -> None:
    """Members are mostly class 0 and the score depends only on the class (no membership): the plain
    permutation null is fooled, the class-matched null is not (mutant: a test without it)."""
    g = _gen(4)
    ny = torch.randint(0, 5, (600,), generator=g)
    my = torch.where(torch.rand(300, generator=g) < 0.8, 0, torch.randint(0, 5, (300,), generator=g))
    bonus = torch.tensor([1.5, 0.0, 0.0, 0.0, 0.0])
    ns, ms = bonus[ny] + torch.randn(600, generator=g), bonus[my] + torch.randn(300, generator=g)
    r = membership_test(ms, ns, attack="t", data="natural", permutations=199, generator=_gen(5), member_y=my,
                        nonmember_y=ny, class_permutations=100)
    assert r.p_value < 0.01  # what a test without the class-matched null would report
    assert r.class_matched_p_value is not None and r.class_matched_p_value > 0.05
    assert r.advantage < r.class_matched_q95 and not r.significant


def _lira_world(seed: int, shadows: int = 16, m: int = 400):
    """Examples with very different inherent confidence δ_i (sd 3); training on one adds Δ = 1 to its
    φ; shadows are in for a random half. Returns ``(φ_obs, φ_shadow, in_mask, is_member)``."""
    g = _gen(seed)
    delta = 3.0 * torch.randn(m, generator=g)
    is_member = torch.zeros(m, dtype=torch.bool)
    is_member[torch.randperm(m, generator=g)[: m // 8]] = True
    half = torch.rand(shadows // 2, m, generator=g) < 0.5
    in_mask = torch.cat([half, ~half])
    phi_sh = delta + in_mask.double() + 0.3 * torch.randn(shadows, m, generator=g, dtype=torch.float64)
    phi_obs = delta + is_member.double() + 0.3 * torch.randn(m, generator=g, dtype=torch.float64)
    return phi_obs, phi_sh, in_mask, is_member


@pytest.mark.parametrize("online", [True, False])
def test_lira_needs_per_example_calibration(online: bool) -> None:
    """Mutant: LiRA with one global μ (no per-example calibration) = a confidence threshold; the
    examples' difficulty swamps the membership signal. The real LiRA must detect it."""
    phi_obs, phi_sh, in_mask, mem = _lira_world(6)
    real = lira_scores(phi_obs, phi_sh, in_mask, online=online)
    mutant_sh = phi_sh.mean(1, keepdim=True).expand_as(phi_sh)  # every example gets the same μ
    mutant = lira_scores(phi_obs, mutant_sh + 0.3 * torch.randn(phi_sh.shape, generator=_gen(7),
                                                                dtype=torch.float64), in_mask, online=online)
    r = membership_test(real[mem], real[~mem], attack="lira", data="synthetic", permutations=199, generator=_gen(8))
    b = membership_test(mutant[mem], mutant[~mem], attack="mutant", data="synthetic", permutations=199,
                        generator=_gen(8))
    assert r.p_value < 0.01 and r.tpr_at_1pct_fpr > 0.3 and r.tpr_at_1pct_fpr_ci[0] > 0.1
    assert b.tpr_at_1pct_fpr < 0.15 and b.advantage < r.advantage - 0.3


def test_lira_fixed_variance_below_64_shadows() -> None:
    phi_obs, phi_sh, in_mask, _ = _lira_world(9, shadows=8, m=50)
    got = lira_scores(phi_obs, phi_sh, in_mask, online=False)
    out = ~in_mask
    k = out.sum(0)
    mu = (phi_sh * out).sum(0) / k
    var = ((phi_sh - mu) ** 2 * out).sum(0) / (k - 1)
    assert torch.allclose(got, (phi_obs - mu) / var.mean().sqrt())  # pooled σ (8 shadows < 64)
    per_example = lira_scores(phi_obs, phi_sh, in_mask, online=False, fixed_variance_below=2)
    assert torch.allclose(per_example, (phi_obs - mu) / var.sqrt())
    with pytest.raises(ValueError, match="at least 2 shadows"):
        lira_scores(phi_obs, phi_sh[:2], in_mask[:2], online=True)


def test_train_heads_sgd_matches_momentum_sgd_and_respects_masks() -> None:
    g = _gen(10)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (40,), generator=g)
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, :20], mask[1, 20:] = True, True
    heads = train_heads_sgd(x, y, mask, 2, steps=7, batch_size=20, lr=0.3, momentum=0.9, generator=_gen(11))
    for s, sl in ((0, slice(0, 20)), (1, slice(20, 40))):  # full-subset batches: plain momentum SGD
        w = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w, b], lr=0.3, momentum=0.9)
        for _ in range(7):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(x[sl] @ w.T + b, y[sl]).backward()
            opt.step()
        assert torch.allclose(heads[s], torch.cat([w.detach().reshape(-1), b.detach()]), atol=1e-10)
