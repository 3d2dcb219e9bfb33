"""FLTrust, MOZI/UBAR and BALANCE: hand-checked values, fallbacks and validation."""

from __future__ import annotations

import math

import pytest
import torch

from strategies import AggregationContext, build


def ctx(p: int = 2, **kw) -> AggregationContext:
    return AggregationContext(layer_shape=(1, p), bias=False, **kw)


# ------------------------------------------------------------------------------------ FLTrust


def test_fltrust_by_hand():
    # g0 = (1,0). Δ: (2,0) cos 1 → rescaled (1,0); (0,3) cos 0 → TS 0; (-1,0) cos -1 → TS 0;
    # (3,3) cos 1/√2 → rescaled (1/√2, 1/√2). Result (1·(1,0) + (1/√2)(1/√2,1/√2)) / (1 + 1/√2)
    received = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [3.0, 3.0]])
    r = 1 / math.sqrt(2)
    expect = [1.5 / (1 + r), 0.5 / (1 + r)]
    rule = build("fltrust")
    out = rule(torch.zeros(2), received, ctx(root_update=torch.tensor([1.0, 0.0])))
    assert out.tolist() == pytest.approx(expect)
    # the same with every vector shifted by own = (1, -2)
    own = torch.tensor([1.0, -2.0])
    out = rule(own, received + own, ctx(root_update=torch.tensor([2.0, -2.0])))
    assert out.tolist() == pytest.approx([expect[0] + 1, expect[1] - 2])


def test_fltrust_no_trust_keeps_own_and_needs_root():
    own = torch.tensor([1.0, 1.0])
    received = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # orthogonal and zero updates
    assert build("fltrust")(own, received, ctx(root_update=torch.tensor([2.0, 1.0]))).tolist() == [1.0, 1.0]
    assert build("fltrust").needs == frozenset({"root_update"})
    with pytest.raises(ValueError, match="root_update"):
        build("fltrust")(own, received, ctx())


def test_fltrust_sender_equal_to_own_is_ignored_not_nan():
    # regression (found by the property test): Δ = 0 gave ||g0||/tiny = inf and 0·inf = NaN, so
    # one sender repeating own's vector made the rule return NaN (and aggregate fall back to own)
    own = torch.tensor([1.0, 1.0])
    received = torch.stack([own, torch.tensor([3.0, 1.0])])
    # ||g0|| = 5: 5 / tiny overflows float64; the trusted sender's Δ = (2,0) is rescaled to (5,0)
    out = build("fltrust")(own, received, ctx(root_update=torch.tensor([6.0, 1.0])))
    assert out.tolist() == pytest.approx([6.0, 1.0])


# ------------------------------------------------------------------------------------ MOZI

# Head with C=2 classes, d=1 feature, no bias: logits(x) = (w0·x, w1·x).
# Validation: x=+1 → class 0, x=-1 → class 1. own = (0,0): both logits 0, loss ln 2.
# r1 = (1,-1): loss ln(1+e^-2) ≈ 0.127   r2 = (-1,1): ln(1+e^2) ≈ 2.127   (both at distance √2)
# r3 = (2,-2): ln(1+e^-4) ≈ 0.018 (distance √8)   r4 = (50,-50): loss ≈ 0 (distance 50√2)
MOZI_CTX = dict(val_x=torch.tensor([[1.0], [-1.0]]), val_y=torch.tensor([0, 1]))
R = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, -2.0], [50.0, -50.0]])


def mctx(f: int) -> AggregationContext:
    return AggregationContext(layer_shape=(2, 1), bias=False, f=f, **MOZI_CTX)


def test_mozi_by_hand():
    # f=1 → n-f = 3 nearest: r1, r2, r3; loss <= ln 2: r1, r3 → mean (1.5,-1.5); α=0.5 → (0.75,-0.75)
    assert build("mozi")(torch.zeros(2), R, mctx(1)).tolist() == pytest.approx([0.75, -0.75])
    # f=0 → all 4 pass the distance stage; r1, r3, r4 beat own → mean (53/3, -53/3); α=0.5
    assert build("mozi")(torch.zeros(2), R, mctx(0)).tolist() == pytest.approx([53 / 6, -53 / 6])
    # rho=0.25 → ceil(1) nearest: r1; alpha=0.2 → 0.8·r1
    out = build("mozi", {"rho": 0.25, "alpha": 0.2})(torch.zeros(2), R, mctx(0))
    assert out.tolist() == pytest.approx([0.8, -0.8])


def test_mozi_falls_back_to_the_lowest_loss_candidate():
    # only worse candidates: r2 (loss 2.127) and (-2,2) (loss ≈ 4.018) → keep r2
    received = torch.tensor([[-2.0, 2.0], [-1.0, 1.0]])
    out = build("mozi")(torch.zeros(2), received, mctx(0))
    assert out.tolist() == pytest.approx([-0.5, 0.5])


def test_mozi_needs_validation():
    assert build("mozi").needs == frozenset({"validation"})
    with pytest.raises(ValueError, match="val_x"):
        build("mozi")(torch.zeros(2), R, AggregationContext((2, 1), bias=False))


# ------------------------------------------------------------------------------------ BALANCE


def test_balance_by_hand():
    own = torch.tensor([3.0, 4.0])  # ||own|| = 5; γ=0.3 → threshold 1.5·exp(-κ t/T)
    received = torch.tensor([[3.0, 5.0], [4.0, 5.0], [5.0, 4.0], [3.0, 4.5]])  # distances 1, √2, 2, 0.5
    # t=0: threshold 1.5 → accept (3,5), (4,5), (3,4.5) → mean (10/3, 14.5/3); α=0.5
    out = build("balance")(own, received, ctx(round=0, total_rounds=10))
    assert out.tolist() == pytest.approx([0.5 * 3 + 0.5 * 10 / 3, 0.5 * 4 + 0.5 * 14.5 / 3])
    # t=T: threshold 1.5/e ≈ 0.552 → accept only (3,4.5)
    out = build("balance")(own, received, ctx(round=10, total_rounds=10))
    assert out.tolist() == pytest.approx([3.0, 4.25])
    # kappa=0, gamma=0.25: threshold 1.25 at any t → (3,5), (3,4.5); alpha=0 → their mean
    rule = build("balance", {"kappa": 0.0, "gamma": 0.25, "alpha": 0.0})
    out = rule(own, received, ctx(round=9, total_rounds=10))
    assert out.tolist() == pytest.approx([3.0, 4.75])


def test_balance_keeps_own_when_nothing_is_accepted():
    own = torch.tensor([3.0, 4.0])
    out = build("balance")(own, torch.tensor([[30.0, 40.0], [-3.0, -4.0]]), ctx())
    assert out.tolist() == [3.0, 4.0]


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("mozi", {"rho": 0.0}, "rho"),
        ("mozi", {"rho": 1.5}, "rho"),
        ("mozi", {"alpha": 1.1}, "alpha"),
        ("balance", {"gamma": 0.0}, "gamma"),
        ("balance", {"kappa": -1.0}, "kappa"),
        ("balance", {"alpha": -0.1}, "alpha"),
    ],
)
def test_parameter_errors_name_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build(name, params)


# ------------------------------------------------------------------ MOZI as the Bristle authors ran it


def test_mozi_fallback_own_keeps_the_trained_model():
    # only worse candidates (as in the lowest-loss test above): the authors' code keeps own
    received = torch.tensor([[-2.0, 2.0], [-1.0, 1.0]])
    own = torch.tensor([0.25, -0.25])
    out = build("mozi", {"fallback": "own"})(own, received, mctx(0))
    assert out.tolist() == own.tolist()


def test_mozi_reference_previous_by_hand():
    # own (trained) = (2,-2), loss ≈ 0.018; previous (before training) = (0,0), loss ln 2; f=1.
    own, prev = torch.tensor([2.0, -2.0]), torch.zeros(2)
    # "trained": 3 nearest to (2,-2) are r3 (0), r1 (√2), r2 (√18); only r3 has loss ≤ 0.018
    # → mean r3 = (2,-2) → 0.5·own + 0.5·(2,-2) = (2,-2)
    c = AggregationContext(layer_shape=(2, 1), bias=False, f=1, previous=prev, **MOZI_CTX)
    assert build("mozi")(own, R, c).tolist() == pytest.approx([2.0, -2.0])
    # "previous": 3 nearest to (0,0) are r1, r2, r3; loss ≤ ln 2: r1, r3 → mean (1.5,-1.5);
    # the result still mixes the trained own: 0.5·(2,-2) + 0.5·(1.5,-1.5) = (1.75,-1.75)
    out = build("mozi", {"reference": "previous"})(own, R, c)
    assert out.tolist() == pytest.approx([1.75, -1.75])
    # the authors' variant: ⌈0.5·4⌉ = 2 nearest to (0,0) (r1, r2: both at √2); r1 passes → 0.5·own + 0.5·r1
    authors = build("mozi", {"rho": 0.5, "reference": "previous", "fallback": "own"})
    assert authors(own, R, c).tolist() == pytest.approx([1.5, -1.5])


def test_mozi_reference_previous_needs_it():
    rule = build("mozi", {"reference": "previous"})
    assert rule.needs == frozenset({"validation", "previous"})
    assert build("mozi").needs == frozenset({"validation"})  # the class attribute is untouched
    with pytest.raises(ValueError, match="ctx.previous"):
        rule(torch.zeros(2), R, mctx(0))


@pytest.mark.parametrize("params, field", [({"reference": "before"}, "reference"), ({"fallback": "x"}, "fallback")])
def test_mozi_variant_errors_name_the_parameter(params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build("mozi", params)


def test_mozi_loss_l2_adds_the_weights_penalty():
    # own (0,0): loss ln 2 ≈ 0.693, penalty 0. r3 = (2,-2): 0.018 + l2/2·8; r4 = (50,-50): ≈0 + l2/2·5000.
    # l2 = 0.1: r1 0.127 + 0.1 = 0.227 passes, r3 0.018 + 0.4 = 0.418 passes, r4 250 fails, r2 fails
    out = build("mozi", {"loss_l2": 0.1})(torch.zeros(2), R, mctx(0))
    assert out.tolist() == pytest.approx([0.75, -0.75])  # 0.5·mean(r1, r3)
    # l2 = 0.2: r3 0.018 + 0.8 fails, r1 0.127 + 0.2 passes → 0.5·r1
    out = build("mozi", {"loss_l2": 0.2})(torch.zeros(2), R, mctx(0))
    assert out.tolist() == pytest.approx([0.5, -0.5])
    with pytest.raises(ValueError, match="^loss_l2:"):
        build("mozi", {"loss_l2": -1.0})


def test_fltrust_doc_states_the_root_set_the_engine_uses() -> None:
    from fedsim.prepare import ROOT_SET_SIZE
    from strategies import REGISTRY

    doc = " ".join(REGISTRY["fltrust"].__doc__.split())
    assert f"root set is {ROOT_SET_SIZE} training samples" in doc and "validation split" in doc
