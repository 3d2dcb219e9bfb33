"""Coordinate-wise median and trimmed mean: hand-checked values, checks and validation."""

from __future__ import annotations

import pytest
import torch

from strategies import AggregationContext, build

OWN = torch.tensor([5.0, 0.0])
RECEIVED = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, -5.0], [100.0, 7.0]])


def ctx(f: int) -> AggregationContext:
    return AggregationContext(layer_shape=(1, 2), bias=False, f=f)


def test_median_with_own_odd_count():
    # coordinate 0: 1,2,3,5,100 → 3; coordinate 1: -5,0,7,10,20 → 7
    assert build("median")(OWN, RECEIVED, ctx(1)).tolist() == [3.0, 7.0]


def test_median_without_own_even_count_averages_the_middle_pair():
    # coordinate 0: 1,2,3,100 → (2+3)/2; coordinate 1: -5,7,10,20 → (7+10)/2
    assert build("median", {"include_own": False})(OWN, RECEIVED, ctx(1)).tolist() == [2.5, 8.5]


def test_trimmed_mean_trims_f_per_side():
    # f=1, with own: drop the min and max per coordinate → (2+3+5)/3, (0+7+10)/3
    out = build("trimmed_mean")(OWN, RECEIVED, ctx(1))
    assert out.tolist() == pytest.approx([10 / 3, 17 / 3])
    # without own, f=1: 1,2,3,100 → (2+3)/2; -5,7,10,20 → (7+10)/2
    out = build("trimmed_mean", {"include_own": False})(OWN, RECEIVED, ctx(1))
    assert out.tolist() == pytest.approx([2.5, 8.5])
    # f=0: plain mean of the 5 vectors
    assert build("trimmed_mean")(OWN, RECEIVED, ctx(0)).tolist() == pytest.approx([111 / 5, 32 / 5])


def test_trimmed_mean_beta_fraction():
    # beta=0.4 of N=5 → b = floor(2.0) = 2 per side → the median
    assert build("trimmed_mean", {"beta": 0.4})(OWN, RECEIVED, ctx(0)).tolist() == pytest.approx([3.0, 7.0])
    # beta=0.2 → b = 1
    out = build("trimmed_mean", {"beta": 0.2})(OWN, RECEIVED, ctx(0))
    assert out.tolist() == pytest.approx([10 / 3, 17 / 3])
    # beta=0.3 → b = floor(1.5) = 1, not 2 (beta·N above is whole, so floor and ceil agreed there)
    out = build("trimmed_mean", {"beta": 0.3})(OWN, RECEIVED, ctx(0))
    assert out.tolist() == pytest.approx([10 / 3, 17 / 3])


def test_checks():
    with pytest.raises(ValueError, match="2f"):
        build("median").check(3, 2)  # N = 4 < 5
    build("median").check(4, 2)
    with pytest.raises(ValueError, match="2f"):
        build("median", {"include_own": False}).check(4, 2)
    with pytest.raises(ValueError, match="2f"):
        build("trimmed_mean").check(3, 2)  # N = 4 <= 4
    build("trimmed_mean").check(4, 2)
    with pytest.raises(ValueError, match="^beta:"):
        build("trimmed_mean", {"beta": 0.1}).check(9, 2)  # b = floor(0.1*10) = 1 < f


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("median", {"include_own": "yes"}, "include_own"),
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("trimmed_mean", {"beta": -0.1}, "beta"),
        ("trimmed_mean", {"beta": float("nan")}, "beta"),
    ],
)
def test_parameter_errors_name_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build(name, params)
