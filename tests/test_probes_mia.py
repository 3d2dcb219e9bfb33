"""Membership inference probes: exact loss-threshold advantage and offline LiRA."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.probes import (
    best_advantage,
    head_logits,
    lira_offline_mia,
    loss_threshold_mia,
    loss_threshold_result,
    roc_auc,
    tpr_at_fpr,
    train_heads,
    train_shadow_heads,
)
from attacks.probes._head import ce_losses


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add contention
    yield
    torch.set_num_threads(n)


def t(xs: list[float]) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_perfectly_separable_is_one() -> None:
    assert loss_threshold_mia(t([0.1, 0.2, 0.3]), t([0.5, 0.9])) == 1.0


def test_identical_is_zero() -> None:
    losses = t([0.3, 0.1, 0.7, 0.7])
    assert loss_threshold_mia(losses, losses.flip(0)) == 0.0


def test_reversed_separation_is_zero() -> None:
    # members have the *higher* losses: "member iff loss <= tau" never beats chance
    assert loss_threshold_mia(t([2.0, 3.0]), t([0.1, 0.2])) == 0.0


def test_hand_case() -> None:
    # sorted: .1m .2n .35m .4m .5n .8m .9n; best at tau=.4: TPR 3/4, FPR 1/3
    adv = loss_threshold_mia(t([0.1, 0.4, 0.35, 0.8]), t([0.2, 0.5, 0.9]))
    assert adv == pytest.approx(3 / 4 - 1 / 3, abs=1e-12)
    _, thr = best_advantage(-t([0.1, 0.4, 0.35, 0.8]), -t([0.2, 0.5, 0.9]))
    assert -thr == pytest.approx(0.4)


def test_ties_are_grouped() -> None:
    # tau=1: TPR 2/3, FPR 1/2; tau=2: TPR 1, FPR 1/2 -> 1/2 (a tie-unaware sweep could report 2/3)
    assert loss_threshold_mia(t([1.0, 1.0, 2.0]), t([1.0, 3.0])) == pytest.approx(0.5)


def brute_force(members: list[int], nonmembers: list[int]) -> Fraction:
    best = Fraction(0)
    for tau in set(members) | set(nonmembers):
        tpr = Fraction(sum(m <= tau for m in members), len(members))
        fpr = Fraction(sum(n <= tau for n in nonmembers), len(nonmembers))
        best = max(best, tpr - fpr)
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=12),
       st.lists(st.integers(0, 6), min_size=1, max_size=12))
def test_matches_brute_force(members: list[int], nonmembers: list[int]) -> None:
    adv = loss_threshold_mia(t([float(m) for m in members]), t([float(n) for n in nonmembers]))
    assert adv == pytest.approx(float(brute_force(members, nonmembers)), abs=1e-12)


def test_auc_and_low_fpr() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    m = torch.randn(50, generator=g, dtype=torch.float64).round(decimals=1) + 0.5
    n = torch.randn(70, generator=g, dtype=torch.float64).round(decimals=1)
    ref = sklearn_metrics.roc_auc_score([1] * 50 + [0] * 70, torch.cat([m, n]).numpy())
    assert roc_auc(m, n) == pytest.approx(ref, abs=1e-12)
    assert tpr_at_fpr(t([3.0, 2.0, 0.0]), t([1.0, -1.0]), 0.0) == pytest.approx(2 / 3)
    res = loss_threshold_result(t([0.1, 0.2]), t([0.5, 0.9]))
    assert res.advantage == 1.0 and res.auc == 1.0
    json.dumps(res.to_dict(), allow_nan=False)


def _overfit_case():
    g = torch.Generator().manual_seed(0)
    c, d = 5, 40
    means = torch.randn(c, d, generator=g) * 0.35

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, c, (n,), generator=g)
        return means[y] + torch.randn(n, d, generator=g), y

    train, other, heldout, pool = sample(100), sample(200), sample(200), sample(200)
    target = train_heads(train[0], c, y=train[1], epochs=300, lr=0.05)[0]
    shadows = train_shadow_heads(pool[0], pool[1], (c, d), True, 16, epochs=300, lr=0.05,
                                 generator=torch.Generator().manual_seed(3))
    return target, shadows, train, other, heldout


def test_lira_offline() -> None:
    target, shadows, train, other, heldout = _overfit_case()
    assert shadows.num_shadows == 16
    assert bool((shadows.in_mask.sum(0) == 8).all())  # complementary halves
    res = lira_offline_mia(target, shadows, *train, *heldout)
    assert res.attack == "lira_offline" and res.advantage > 0.2 and res.auc > 0.65
    null = lira_offline_mia(target, shadows, *other, *heldout)
    assert null.advantage < 0.15 and abs(null.auc - 0.5) < 0.1
    fixed = lira_offline_mia(target, shadows, *train, *heldout, fixed_variance=True)
    assert fixed.advantage > 0.2
    # the plain loss attack also sees this overfit model
    lm = ce_losses(head_logits(target, train[0], (5, 40), True), train[1])
    ln = ce_losses(head_logits(target, heldout[0], (5, 40), True), heldout[1])
    assert loss_threshold_mia(lm, ln) > 0.3
    json.dumps(res.to_dict(), allow_nan=False)
