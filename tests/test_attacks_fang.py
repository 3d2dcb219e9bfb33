"""Fang et al. (USENIX Security 2020) attacks on Krum and trimmed mean/median."""

import math

import pytest
import torch

from attacks import AttackContext, build
from attacks.fang import krum_lambda_bound


def krum_index(x: torch.Tensor, f: int) -> int:
    """Independent reference Krum: lowest sum of squared distances to the n − f − 2 nearest."""
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted((x[i] - x[j]).square().sum().item() for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return min(range(n), key=lambda i: (scores[i], i))


def test_lambda_bound_by_hand() -> None:
    # Unit square, n = 6, f = 1: Γ_i = the 3 others at distances 1, 1, √2 → term 1 = (2 + √2)/(3√2);
    # every corner is √0.5 from μ = (½, ½) → term 2 = √0.5/√2 = ½.
    honest = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    bound = krum_lambda_bound(honest, honest.mean(0), n=6, f=1)
    assert bound == pytest.approx((2 + math.sqrt(2)) / (3 * math.sqrt(2)) + 0.5, abs=1e-12)
    assert bound == pytest.approx(1.3047378541243648, abs=1e-12)


@pytest.mark.parametrize("reference", ["mean", "zero"])
def test_fang_krum_is_selected_by_krum(reference: str) -> None:
    torch.manual_seed(0)
    m, k, f, p = 9, 3, 3, 16
    honest = torch.randn(m, p, dtype=torch.float64) * 0.3 + (1.0 if reference == "mean" else 0.2)
    attack = build("fang_krum", {"reference": reference})
    forged = attack.forge(honest, torch.zeros(k, p, dtype=torch.float64), AttackContext(n=m + k, f=f))
    assert forged.shape == (k, p) and torch.equal(forged[0], forged[-1])
    assert krum_index(torch.cat([honest, forged]), f) >= m
    lam, crafted = attack.search(honest, k, f)
    mu = honest.mean(0)
    ref = mu if reference == "mean" else torch.zeros(p, dtype=torch.float64)
    assert torch.allclose(crafted, ref - lam * torch.sign(mu))
    # λ is the first of bound, bound/2, bound/4, ... for which Krum picks the forged vector.
    bound = krum_lambda_bound(honest, ref, m + k, f)
    halvings = round(math.log2(bound / lam))
    assert lam == pytest.approx(bound / 2**halvings)
    if halvings > 0:
        bigger = (ref - 2 * lam * torch.sign(mu)).expand(k, p)
        assert krum_index(torch.cat([honest, bigger]), f) < m


def test_fang_krum_without_enough_vectors_returns_bound() -> None:
    honest = torch.tensor([[1.0, 2.0], [2.0, 1.0]])
    lam, crafted = build("fang_krum").search(honest, k=1, f=1)  # n − f − 2 = 0: Krum undefined
    assert lam == pytest.approx(krum_lambda_bound(honest, honest.mean(0), 3, 1))


def test_fang_trimmed_mean_intervals_by_hand() -> None:
    honest = torch.tensor([[1.0, -1.0, 2.0, -3.0], [3.0, -2.0, -1.0, -1.0]])
    # μ = (2, −1.5, 0.5, −2): push down, up, down, up
    # coord 0: min 1 > 0 → [½, 1]; coord 1: max −1 ≤ 0 → [−1, −½];
    # coord 2: min −1 ≤ 0 → [−2, −1]; coord 3: max −1 ≤ 0 → [−1, −½]   (b = 2)
    lo = torch.tensor([0.5, -1.0, -2.0, -1.0])
    hi = torch.tensor([1.0, -0.5, -1.0, -0.5])
    attack = build("fang_trimmed_mean")
    ctx = AttackContext(n=52, f=50, generator=torch.Generator().manual_seed(0))
    out = attack.forge(honest, torch.zeros(50, 4), ctx)
    assert out.shape == (50, 4)
    assert (out >= lo).all() and (out <= hi).all()
    assert (out.max(0).values - out.min(0).values > 0.2).all()  # sampled, not constant


def test_fang_trimmed_mean_harmful_side_and_deterministic() -> None:
    torch.manual_seed(1)
    honest = torch.randn(8, 200)
    ctx = AttackContext(n=11, f=3, generator=torch.Generator().manual_seed(5))
    attack = build("fang_trimmed_mean", {"b": 3.0})
    out = attack.forge(honest, torch.zeros(3, 200), ctx)
    down = honest.mean(0) > 0
    w_max, w_min = honest.max(0).values, honest.min(0).values
    assert (out[:, down] <= w_min[down]).all() and (out[:, ~down] >= w_max[~down]).all()
    # bounded by the factor b
    assert (out[:, down] >= torch.minimum(w_min[down] * 3, w_min[down] / 3)).all()
    assert (out[:, ~down] <= torch.maximum(w_max[~down] * 3, w_max[~down] / 3)).all()
    ctx = AttackContext(n=11, f=3, generator=torch.Generator().manual_seed(5))
    again = attack.forge(honest, torch.zeros(3, 200), ctx)
    assert torch.equal(out, again)


def test_local_krum_matches_reference() -> None:
    """The one Krum kernel (fedlib.distances, shared with strategies.krum) as the attacks call it:
    strict, so an undefined Krum raises instead of degrading."""
    from fedlib.distances import krum_scores, sq_dists

    torch.manual_seed(4)
    for f in (0, 1, 3):
        x = torch.randn(9, 5, dtype=torch.float64)
        assert int(krum_scores(sq_dists(x, x), f).argmin()) == krum_index(x, f)
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    # n − f − 2 = 1 nearest: squared gaps 1, 1, 4, 49
    assert torch.equal(krum_scores(sq_dists(x, x), 1), torch.tensor([1.0, 1.0, 4.0, 49.0]))
    with pytest.raises(ValueError, match="n - f - 2"):
        krum_scores(sq_dists(x, x), 2)
    # a rule at run time degrades instead: k clamped to 1
    assert torch.equal(krum_scores(sq_dists(x, x), 2, degrade=True), torch.tensor([1.0, 1.0, 4.0, 49.0]))
