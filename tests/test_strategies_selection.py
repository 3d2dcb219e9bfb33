"""Krum, Multi-Krum, Bulyan and Nearest-Neighbour Mixing: hand-checked values and robustness."""

from __future__ import annotations

import pytest
import torch

from strategies import AggregationContext, aggregate, build


def ctx(p: int, f: int) -> AggregationContext:
    return AggregationContext(layer_shape=(1, p), bias=False, f=f)


def col(*values: float) -> torch.Tensor:
    """Received 1-D points as an ``[n, 1]`` stack."""
    return torch.tensor(values, dtype=torch.float32)[:, None]


# ------------------------------------------------------------------------------------ Krum


def test_krum_hand_checked_without_own():
    # points 0,1,2,10,11; f=1 → n-f-2 = 2 nearest.
    # s(0)=1+4=5, s(1)=1+1=2, s(2)=1+4=5, s(10)=1+64=65, s(11)=1+81=82 → Krum picks 1.
    out = build("krum", {"include_own": False})(torch.zeros(1), col(0, 1, 2, 10, 11), ctx(1, 1))
    assert out.tolist() == [1.0]


def test_krum_hand_checked_with_own():
    # population [own=1.5, 0, 1, 2, 10, 11], N=6, f=1 → 3 nearest.
    # s(1.5)=0.25+0.25+2.25=2.75, s(1)=0.25+1+1=2.25, s(0)=1+2.25+4=7.25, s(2)=0.25+1+4=5.25
    out = build("krum")(torch.tensor([1.5]), col(0, 1, 2, 10, 11), ctx(1, 1))
    assert out.tolist() == [1.0]


def test_multikrum_hand_checked():
    # scores from the Krum test: 1 (2), 0 (5), 2 (5), 10 (65), 11 (82).
    rule = build("multikrum", {"include_own": False})  # m = n - f = 4 → mean(1, 0, 2, 10)
    assert rule(torch.zeros(1), col(0, 1, 2, 10, 11), ctx(1, 1)).tolist() == [pytest.approx(13 / 4)]
    rule = build("multikrum", {"include_own": False, "m": 3})  # mean(1, 0, 2)
    assert rule(torch.zeros(1), col(0, 1, 2, 10, 11), ctx(1, 1)).tolist() == [pytest.approx(1.0)]


def test_krum_check_bounds():
    for f in range(4):
        with pytest.raises(ValueError, match="2f"):
            build("krum", {"include_own": False}).check(2 * f + 2, f)
        build("krum", {"include_own": False}).check(2 * f + 3, f)
        # with own counted the population is n + 1
        with pytest.raises(ValueError, match="2f"):
            build("krum").check(2 * f + 1, f)
        build("krum").check(2 * f + 2, f)
        with pytest.raises(ValueError):
            build("multikrum", {"include_own": False}).check(2 * f + 2, f)
    with pytest.raises(ValueError, match="^m:"):
        build("multikrum", {"m": 9}).check(5, 1)


# ------------------------------------------------------------------------------------ Bulyan


def test_bulyan_hand_checked():
    # x = 0,1,9,10,13,15,100; f=1; θ = 7-2 = 5 picks, Krum over the remaining set each time:
    # 1) k=4: s(0)=351 s(1)=290 s(9)=117 s(10)=1+9+25+81=116 s(13)=173 s(15)=261 → 10
    # 2) k=3: s(0)=251 s(1)=209 s(9)=16+36+64=116 s(13)=164 s(15)=236 → 9
    # 3) k=2: s(0)=1+169=170 s(1)=1+144=145 s(13)=4+144=148 s(15)=200 → 1
    # 4) k=1: s(0)=169 s(13)=4 s(15)=4 → tie, lower index → 13
    # 5) k=1: s(0)=225 s(15)=225 → tie → 0
    # S = {10, 9, 1, 13, 0}, median 9, β = θ-2f = 3 closest to 9: 9, 10, 13 → 32/3
    x = col(0, 1, 9, 10, 13, 15, 100)
    rule = build("bulyan", {"include_own": False})
    assert [int(x[i]) for i in rule.select(x.double(), 1)] == [10, 9, 1, 13, 0]
    assert rule(torch.zeros(1), x, ctx(1, 1)).tolist() == [pytest.approx(32 / 3)]


def test_bulyan_check_bounds():
    for f in range(4):
        with pytest.raises(ValueError, match="4f"):
            build("bulyan", {"include_own": False}).check(4 * f + 2, f)
        build("bulyan", {"include_own": False}).check(4 * f + 3, f)
        with pytest.raises(ValueError, match="4f"):
            build("bulyan").check(4 * f + 1, f)
        build("bulyan").check(4 * f + 2, f)


# ------------------------------------------------------------------------------------ NNM


def test_nnm_hand_checked():
    # received 0,1,3,10; f=1 → each replaced by the mean of its 3 nearest (itself included):
    # 0 → (0+1+3)/3, 1 → (1+0+3)/3, 3 → (3+1+0)/3, 10 → (10+3+1)/3
    x = col(0, 1, 3, 10)
    mean = build("nnm", {"inner": "fedavg", "inner_params": {"include_own": False}, "include_own": False})
    assert mean(torch.zeros(1), x, ctx(1, 1)).tolist() == [pytest.approx((3 * 4 / 3 + 14 / 3) / 4)]
    med = build("nnm", {"inner": "median", "inner_params": {"include_own": False}, "include_own": False})
    assert med(torch.zeros(1), x, ctx(1, 1)).tolist() == [pytest.approx(4 / 3)]


def test_nnm_mixes_own_and_hands_it_to_inner():
    # population [own=0, 2, 4, 100], f=1 → 3 nearest: 0 → (0+2+4)/3 = 2, 2 → 2, 4 → 2, 100 → 106/3.
    # inner "local" returns its own argument unchanged: the mixed own, 2.
    rule = build("nnm", {"inner": "local"})
    assert rule(torch.zeros(1), col(2, 4, 100), ctx(1, 1)).tolist() == [pytest.approx(2.0)]
    keep = build("nnm", {"inner": "local", "include_own": False})
    assert keep(torch.zeros(1), col(2, 4, 100), ctx(1, 1)).tolist() == [0.0]


def test_nnm_delegates_check_needs_and_validation():
    with pytest.raises(ValueError, match="4f"):
        build("nnm", {"inner": "bulyan"}).check(5, 1)
    assert build("nnm", {"inner": "mozi"}).needs == frozenset({"validation"})
    with pytest.raises(ValueError, match="^inner:"):
        build("nnm", {"inner": "nope"})
    with pytest.raises(ValueError, match="^inner: .*m:"):
        build("nnm", {"inner": "multikrum", "inner_params": {"m": 0}})
    with pytest.raises(ValueError, match="^inner_params:"):
        build("nnm", {"inner_params": [1]})


# ------------------------------------------------------------------------------------ robustness


@pytest.mark.parametrize(
    "name, params",
    [
        ("krum", {}),
        ("multikrum", {}),
        ("median", {}),
        ("trimmed_mean", {}),
        ("bulyan", {}),
        ("nnm", {"inner": "median"}),
        ("nnm", {"inner": "trimmed_mean"}),
    ],
)
@pytest.mark.parametrize("include_own", [True, False])
def test_far_byzantine_vectors_stay_outside_the_result(name, params, include_own):
    # own + 9 honest senders + f=2 senders at ±1e6: the result stays in the honest coordinate-wise hull
    gen = torch.Generator().manual_seed(7)
    p, f = 6, 2
    honest = torch.rand(10, p, generator=gen) * 2 - 1  # row 0 is own
    byz = torch.tensor([[1e6] * p, [-1e6] * p])
    if name == "nnm":
        params = {**params, "include_own": include_own, "inner_params": {"include_own": include_own}}
    else:
        params = {**params, "include_own": include_own}
    rule = build(name, params)
    rule.check(11, f)
    own, received = honest[0], torch.cat([honest[1:5], byz, honest[5:]])
    out, dropped = aggregate(rule, own, received, AggregationContext((1, p), bias=False, f=f))
    pool = honest if include_own else honest[1:]
    assert dropped == 0
    assert bool((out >= pool.min(dim=0).values - 1e-6).all() and (out <= pool.max(dim=0).values + 1e-6).all())


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("krum", {"include_own": "yes"}, "include_own"),
        ("multikrum", {"m": 0}, "m"),
        ("multikrum", {"m": True}, "m"),
        ("multikrum", {"m": 2.5}, "m"),
        ("bulyan", {"include_own": None}, "include_own"),
        ("nnm", {"include_own": 1}, "include_own"),
    ],
)
def test_parameter_errors_name_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build(name, params)
