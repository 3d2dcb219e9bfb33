"""Bristle: prioritizer sampling, integrator weights by hand, end-to-end integration."""

from __future__ import annotations

import math

import pytest
import torch

from strategies import AggregationContext, aggregate, build, flatten

C, D = 3, 3
# validation: e0 → class 0, e1 → class 1; class 2 is unfamiliar
VAL_X = torch.eye(3)[:2]
VAL_Y = torch.tensor([0, 1])


def ctx(**kw) -> AggregationContext:
    gen = torch.Generator().manual_seed(0)
    base = dict(layer_shape=(C, D), bias=True, val_x=VAL_X, val_y=VAL_Y, generator=gen)
    return AggregationContext(**{**base, **kw})


def sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def weight(score: float, certainty: float) -> float:
    return max(0.0, 10 * sig(score / 100) - 4) * certainty


# ------------------------------------------------------------------------------------ weights


def test_class_weights_by_hand_for_a_better_candidate():
    # own F1 (0.5, 0.5), candidate (0.9, 0.7): d = 4, 2; scores 4^3.5 = 128, 2^3.5;
    # certainty = mean 0.8 - std 0.1 = 0.7; unfamiliar: the sum of the scores
    w, u = build("bristle").class_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.7]]))
    s0, s1 = 4**3.5, 2**3.5
    assert w.tolist() == [pytest.approx([weight(s0, 0.7), weight(s1, 0.7)])]
    assert u.tolist() == pytest.approx([weight(s0 + s1, 0.7)])
    assert all(v > 0 for v in w[0].tolist() + u.tolist())
    # unfamiliar_score="mean" averages the scores instead
    _, u = build("bristle", {"unfamiliar_score": "mean"}).class_weights(
        torch.tensor([0.5, 0.5]), torch.tensor([[0.9, 0.7]])
    )
    assert u.tolist() == pytest.approx([weight((s0 + s1) / 2, 0.7)])


def test_class_weights_are_zero_for_a_clearly_worse_candidate():
    # own (0.5, 0.5), candidate (0.1, 0.1): d = 4, score -4^4.5 = -512 → floored at -100;
    # 10·sigmoid(-1) - 4 < 0 → weight 0 although certainty = 0.1 > 0
    w, u = build("bristle").class_weights(torch.tensor([0.5, 0.5]), torch.tensor([[0.1, 0.1]]))
    assert w.tolist() == [[0.0, 0.0]] and u.tolist() == [0.0]


def test_class_weights_tolerate_slightly_worse_and_equal_candidates():
    # the paper's transform is 0 only below score 100·ln(0.4/0.6) ≈ -40.5: a candidate that is
    # slightly worse (d = 0.5, score -0.5^4.5) keeps a positive weight, an equal one gets 1·certainty
    w, _ = build("bristle").class_weights(torch.tensor([0.5]), torch.tensor([[0.45], [0.5]]))
    assert w[0, 0].item() == pytest.approx(weight(-(0.5**4.5), 0.45))
    assert w[1, 0].item() == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ integration


def head(w: list[list[float]], b: list[float]) -> torch.Tensor:
    return flatten(torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))


def zero_mean(p: torch.Tensor) -> torch.Tensor:
    w, b = p[: C * D].reshape(C, D), p[C * D :]
    return flatten(w - w.mean(dim=0, keepdim=True), b - b.mean())


OWN_GOOD = head([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [0, 0, 0])  # F1 = (1, 1)


def test_worse_candidate_leaves_own_unchanged():
    # swaps classes 0 and 1 → F1 (0, 0) → certainty 0 → all weights 0 (familiar and unfamiliar)
    swapped = head([[0, 1, 0], [1, 0, 0], [0, 0, 5]], [1, 1, 1])
    out = build("bristle", {"zero_mean": False})(OWN_GOOD, swapped[None], ctx())
    assert torch.equal(out, OWN_GOOD)
    out = build("bristle")(OWN_GOOD, swapped[None], ctx())
    assert torch.allclose(out, zero_mean(OWN_GOOD))


def test_identical_candidates_leave_own_unchanged():
    own = torch.randn(C * D + C, generator=torch.Generator().manual_seed(3))
    out = build("bristle", {"zero_mean": False})(own, torch.stack([own, own]), ctx())
    assert torch.allclose(out, own, atol=1e-6)
    assert torch.allclose(build("bristle")(own, torch.stack([own, own]), ctx()), zero_mean(own), atol=1e-6)


def test_better_candidate_integrated_column_by_column():
    # own predicts class 0 for e0 and e1: F1 = (2/3, 0). Candidate 2I with bias (0,0,0.5): F1 = (1, 1).
    own = head([[1, 1, 0], [0, 0, 0], [0, 0, 1]], [0, 0, 0])
    cand = head([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0.5])
    s0 = (10 / 3) ** (3 + 2 / 3)  # d = 10·(1 - 2/3), exponent 3 + F1_own
    s1 = 10.0**3  # d = 10, F1_own = 0
    w = [weight(s0, 1.0), weight(s1, 1.0), weight(s0 + s1, 1.0)]  # certainty = 1 - 0; class 2 unfamiliar
    ow, ob = own[: C * D].reshape(C, D), own[C * D :]
    cw, cb = cand[: C * D].reshape(C, D), cand[C * D :]
    exp_w = torch.stack([(ow[c] + w[c] * cw[c]) / (1 + w[c]) for c in range(C)])
    exp_b = torch.stack([(ob[c] + w[c] * cb[c]) / (1 + w[c]) for c in range(C)])
    expect = flatten(exp_w, exp_b)
    out = build("bristle", {"zero_mean": False})(own, cand[None], ctx())
    assert torch.allclose(out, expect, atol=1e-6)
    assert torch.allclose(build("bristle")(own, cand[None], ctx()), zero_mean(expect), atol=1e-6)
    # ctx.local_classes overrides the classes seen in val_y: with all familiar, class 2 has F1 0/0 = 0
    # for both, d = 0 → weight (10·0.5 - 4)·certainty, certainty = mean(1,1,0) - std(1,1,0)
    cert = 2 / 3 - math.sqrt(2 / 9)
    all_familiar = ctx(local_classes=torch.ones(3, dtype=torch.bool))
    out = build("bristle", {"zero_mean": False})(own, cand[None], all_familiar)
    exp_row2 = (ow[2] + weight(0.0, cert) * cw[2]) / (1 + weight(0.0, cert))
    assert torch.allclose(out[2 * D : 3 * D], exp_row2, atol=1e-6)


def test_nan_candidates_never_propagate():
    cand = head([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0.5])
    inf = cand.clone()
    inf[4] = float("inf")
    bad = torch.stack([cand, torch.full_like(cand, float("nan")), inf])
    rule = build("bristle")
    out, dropped = aggregate(rule, OWN_GOOD, bad, ctx())
    assert dropped == 2 and bool(torch.isfinite(out).all())
    assert torch.equal(out, rule(OWN_GOOD, cand[None], ctx()))


# ------------------------------------------------------------------------------------ prioritizer


RECEIVED = torch.arange(30, dtype=torch.float32).flip(0)[:, None]  # distance to own=0 is the value
OWN0 = torch.zeros(1)


def test_sampling_is_deterministic_under_a_seeded_generator():
    rule = build("bristle")
    a = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(42))
    b = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(42))
    assert torch.equal(a, b) and a.numel() == 10 and a.unique().numel() == 10
    draws = {tuple(rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(draws) > 1


def test_sampling_thirds_follow_alpha():
    values = RECEIVED[:, 0]
    near = build("bristle", {"alpha": 0.0}).select(OWN0, RECEIVED, torch.Generator().manual_seed(0))
    assert sorted(values[near].tolist()) == list(range(10))  # only the nearest third (ranks 0-9)
    far = build("bristle", {"alpha": 1.0}).select(OWN0, RECEIVED, torch.Generator().manual_seed(0))
    assert sorted(values[far].tolist()) == list(range(20, 30))
    # default α = 0.4: third probabilities 0.36 / 0.48 / 0.16
    counts = torch.zeros(3)
    rule = build("bristle")
    for s in range(200):
        idx = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s))
        counts += torch.bincount((values[idx] // 10).long(), minlength=3)
    assert counts[1] > counts[0] > counts[2]


def test_nearest_random_selection_and_small_inputs():
    rule = build("bristle", {"selection": "nearest_random", "k": 3, "e": 2})
    values = RECEIVED[:, 0]
    for s in range(5):
        idx = rule.select(OWN0, RECEIVED, torch.Generator().manual_seed(s))
        got = set(values[idx].tolist())
        assert {0.0, 1.0, 2.0} <= got and len(got) == 5
    assert build("bristle").select(OWN0, RECEIVED[:10], None).tolist() == list(range(10))  # n <= N: all
    with pytest.raises(ValueError, match="generator"):
        build("bristle").select(OWN0, RECEIVED, None)


def test_interface_and_parameter_errors():
    rule = build("bristle")
    assert rule.needs == frozenset({"validation", "generator"}) and rule.exchanges == "output_layer"
    for params, field in [
        ({"num_candidates": 0}, "num_candidates"),
        ({"alpha": 1.5}, "alpha"),
        ({"selection": "random"}, "selection"),
        ({"k": -1}, "k"),
        ({"k": 0, "e": 0}, "k"),
        ({"diff_scale": 0}, "diff_scale"),
        ({"score_floor": 1.0}, "score_floor"),
        ({"score_temperature": 0}, "score_temperature"),
        ({"unfamiliar_score": "max"}, "unfamiliar_score"),
        ({"zero_mean": "no"}, "zero_mean"),
    ]:
        with pytest.raises(ValueError, match=f"^{field}:"):
            build("bristle", params)
    with pytest.raises(ValueError, match="val_x"):
        rule(OWN_GOOD, OWN_GOOD[None], AggregationContext((C, D)))
