"""Unlearning judged against the exactly retrained head in function space (attacks.probes.retrain_gap):
the Newton removal closes the forget-split KL gap without moving the test predictions; the
mutant unlearners that ignore the forget set (weight shrinking, retain-only fine-tuning of the
wrong strength) do not pass the same check."""

from __future__ import annotations

import pytest
import torch

from attacks.probes._head import ce_losses, head_logits
from attacks.probes.retrain_gap import (
    bias_only,
    conjugate_gradient,
    finetune_on_retain,
    function_gap,
    gap_closed,
    hessian_vector,
    kl_and_disagreement,
    newton_removal,
)

SHAPE = (3, 5)
WD = 1e-2


def _fit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact minimiser of mean cross-entropy + (WD/2)‖W‖² (Newton's method, 18 parameters)."""
    def obj(t: torch.Tensor) -> torch.Tensor:
        return ce_losses(head_logits(t, x, SHAPE, True), y).mean() + 0.5 * WD * t[:15].pow(2).sum()

    t = torch.zeros(18, dtype=torch.float64)
    for _ in range(25):
        g = torch.autograd.functional.jacobian(obj, t)
        h = torch.autograd.functional.hessian(obj, t) + 1e-9 * torch.eye(18, dtype=torch.float64)
        t = t - torch.linalg.solve(h, g)
    assert torch.autograd.functional.jacobian(obj, t).norm() < 1e-9
    return t


@pytest.fixture(scope="module")
def world():
    """A forget set that pulls the head (a shifted cluster of class-0 points); heads trained to
    convergence with and without it (the exact "retrained" model)."""
    g = torch.Generator().manual_seed(0)
    centers = 2.0 * torch.randn(3, 5, generator=g, dtype=torch.float64)
    yr = torch.randint(0, 3, (400,), generator=g)
    xr = centers[yr] + torch.randn(400, 5, generator=g, dtype=torch.float64)
    xf = centers[1] + 0.5 * torch.randn(40, 5, generator=g, dtype=torch.float64)  # class-1 region ...
    yf = torch.zeros(40, dtype=torch.long)  # ... labelled 0: the forget set moves the boundary
    yt = torch.randint(0, 3, (400,), generator=g)
    xt = centers[yt] + torch.randn(400, 5, generator=g, dtype=torch.float64)
    full = _fit(torch.cat([xr, xf]), torch.cat([yr, yf]))
    retrained = _fit(xr, yr)
    splits = {"forget": xf, "retain": xr, "test": xt}
    return full, retrained, (xf, yf), (xr, yr), splits


def _passes(before, after) -> bool:
    """The acceptance check: ≥ 80% of the forget KL gap closed, test KL at most the larger of twice
    its starting value and +0.01."""
    kt_b, kt_a = before["kl_to_retrained"]["test"], after["kl_to_retrained"]["test"]
    return gap_closed(before, after)["forget"] >= 0.8 and kt_a <= max(2 * kt_b, kt_b + 0.01)


def test_newton_removal_closes_the_gap_and_shrinking_does_not(world) -> None:
    full, retrained, forget, retain, splits = world
    before = function_gap(retrained, full, splits, SHAPE, True)
    assert before["kl_to_retrained"]["forget"] > 0.1  # there is something to unlearn
    one, _ = newton_removal(full, SHAPE, True, forget, retain, damping=WD)
    new, info = newton_removal(full, SHAPE, True, forget, retain, damping=WD, steps=3)
    after = function_gap(retrained, new, splits, SHAPE, True)
    assert info["cg_relative_residual"] < 1e-6
    assert _passes(before, after), (before, after)
    closed_one = gap_closed(before, function_gap(retrained, one, splits, SHAPE, True))["forget"]
    assert 0.6 < closed_one < gap_closed(before, after)["forget"]  # the one-step formula: most of the way
    assert after["disagreement_to_retrained"]["forget"] <= 0.1 * max(before["disagreement_to_retrained"]["forget"], 0.1)
    # mutant 1: shrink the weights (ignores the forget set); the best shrink factor for the forget split
    shrunk = min((full * a for a in torch.linspace(0, 1, 51)),
                 key=lambda p: kl_and_disagreement(retrained, p, splits["forget"], SHAPE, True)[0])
    assert not _passes(before, function_gap(retrained, shrunk, splits, SHAPE, True))
    # mutant 2: a "removal" that uses the retained data twice instead of the forget set
    wrong, _ = newton_removal(full, SHAPE, True, retain, retain, damping=WD, steps=3)
    assert not _passes(before, function_gap(retrained, wrong, splits, SHAPE, True))


def test_finetune_and_bias_only_are_weaker_baselines(world) -> None:
    full, retrained, forget, retain, splits = world
    before = function_gap(retrained, full, splits, SHAPE, True)
    ft = finetune_on_retain(full, SHAPE, True, retain, steps=20, lr=0.5)
    few = finetune_on_retain(full, SHAPE, True, retain, steps=2, lr=0.5)
    closed = [gap_closed(before, function_gap(retrained, p, splits, SHAPE, True))["forget"] for p in (few, ft)]
    assert 0 < closed[0] < closed[1]  # a converged retained objective: fine-tuning walks towards retraining
    g = torch.arange(18, dtype=torch.float64)
    b = bias_only(g, SHAPE, True)
    assert torch.equal(b[:15], torch.zeros(15, dtype=torch.float64)) and torch.equal(b[15:], g[15:])
    with pytest.raises(ValueError, match="needs a head with a bias"):
        bias_only(g[:15], SHAPE, False)


def test_hessian_vector_matches_autograd_and_cg_solves(world) -> None:
    full, _, _, (xr, yr), _ = world
    hv = hessian_vector(full, xr, SHAPE, True)

    def loss(t):
        return ce_losses(head_logits(t, xr, SHAPE, True), yr).mean()

    h = torch.autograd.functional.hessian(loss, full)
    v = torch.randn(18, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(hv(v), h @ v, atol=1e-10)
    s, _, res = conjugate_gradient(lambda u: h @ u + 0.1 * u, v)
    assert res < 1e-8 and torch.allclose((h + 0.1 * torch.eye(18, dtype=torch.float64)) @ s, v, atol=1e-7)


def test_identical_heads_have_zero_gap(world) -> None:
    full, _, _, _, splits = world
    g = function_gap(full, full, splits, SHAPE, True)
    assert all(v == pytest.approx(0, abs=1e-12) for v in g["kl_to_retrained"].values())
    assert all(v == 0 for v in g["disagreement_to_retrained"].values())
    with pytest.raises(ValueError, match="damping must be > 0"):
        newton_removal(full, SHAPE, True, (splits["forget"], torch.zeros(40, dtype=torch.long)),
                       (splits["retain"], torch.zeros(400, dtype=torch.long)), damping=0)
