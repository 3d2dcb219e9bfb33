"""Centered clipping and ClippedGossip: hand-checked values, bounds and validation."""

from __future__ import annotations

import math

import pytest
import torch

from strategies import AggregationContext, aggregate, build


def ctx(f: int = 0) -> AggregationContext:
    return AggregationContext(layer_shape=(1, 2), bias=False, f=f)


def test_centered_clipping_one_iteration_by_hand():
    # own=0, received (3,4) (norm 5) and (0,1); τ=2 → clipped (1.2,1.6) and (0,1); own's term is 0.
    # v1 = 0 + [(0,0) + (1.2,1.6) + (0,1)] / 3
    received = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    out = build("centered_clipping", {"tau": 2.0})(torch.zeros(2), received, ctx())
    assert out.tolist() == pytest.approx([1.2 / 3, 2.6 / 3])
    out = build("centered_clipping", {"tau": 2.0, "include_own": False})(torch.zeros(2), received, ctx())
    assert out.tolist() == pytest.approx([0.6, 1.3])


def test_centered_clipping_two_iterations_by_hand():
    v = [0.4, 2.6 / 3]  # after the first iteration (see above)
    terms = []
    for x in ([0.0, 0.0], [3.0, 4.0], [0.0, 1.0]):
        z = [x[0] - v[0], x[1] - v[1]]
        norm = math.hypot(*z)
        s = min(1.0, 2.0 / norm)
        terms.append([z[0] * s, z[1] * s])
    expect = [v[i] + sum(t[i] for t in terms) / 3 for i in range(2)]
    rule = build("centered_clipping", {"tau": 2.0, "iterations": 2})
    received = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert rule(torch.zeros(2), received, ctx()).tolist() == pytest.approx(expect)


def test_centered_clipping_bounds_byzantine_influence():
    gen = torch.Generator().manual_seed(1)
    own = torch.rand(2, generator=gen)
    honest = torch.rand(6, 2, generator=gen)
    byz = torch.tensor([[1e6, -1e6], [1e6, 1e6]])
    for iterations in (1, 3):
        rule = build("centered_clipping", {"tau": 0.5, "iterations": iterations})
        out, _ = aggregate(rule, own, torch.cat([honest, byz]), ctx(2))
        assert bool(torch.isfinite(out).all())
        assert float((out - own).norm()) <= 0.5 * iterations + 1e-6  # ||v_L - own|| <= L·τ
    # one iteration: the two Byzantine terms move the result by at most 2·τ/N (N = 9 with own)
    rule = build("centered_clipping", {"tau": 0.5})
    out, _ = aggregate(rule, own, torch.cat([honest, byz]), ctx(2))
    honest_part = own + sum(
        (h - own) * min(1.0, 0.5 / float((h - own).norm())) for h in honest
    ) / 9
    assert float((out - honest_part).norm()) <= 2 * 0.5 / 9 + 1e-6


def test_clipped_gossip_adaptive_and_fixed_radius_by_hand():
    own = torch.zeros(2)
    received = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]])  # distances 5, 1, 10
    # f=1 → τ = 2nd largest distance = 5: (6,8) → (3,4); result = [(3,4)+(0,1)+(3,4)] / (n+1 = 4)
    assert build("clipped_gossip")(own, received, ctx(1)).tolist() == pytest.approx([1.5, 2.25])
    # f=0 → τ = largest: no clipping, plain gossip (9,13)/4
    assert build("clipped_gossip")(own, received, ctx(0)).tolist() == pytest.approx([2.25, 3.25])
    # τ=1: (0.6,0.8) + (0,1) + (0.6,0.8) → (1.2, 2.6)/4
    assert build("clipped_gossip", {"tau": 1.0})(own, received, ctx(1)).tolist() == pytest.approx([0.3, 0.65])
    # f >= n: nothing is trusted, own is kept
    assert build("clipped_gossip")(own, received, ctx(3)).tolist() == [0.0, 0.0]


def test_clipped_gossip_far_byzantine_bounded_by_honest_radius():
    gen = torch.Generator().manual_seed(2)
    own = torch.rand(2, generator=gen)
    honest = torch.rand(5, 2, generator=gen)
    received = torch.cat([honest, torch.tensor([[1e6, 1e6], [-1e6, 3e5]])])
    out, _ = aggregate(build("clipped_gossip"), own, received, ctx(2))
    radius = float((honest - own).norm(dim=1).max())
    assert float((out - own).norm()) <= radius + 1e-6


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("centered_clipping", {"tau": 0.0}, "tau"),
        ("centered_clipping", {"tau": "1"}, "tau"),
        ("centered_clipping", {"iterations": 0}, "iterations"),
        ("centered_clipping", {"iterations": 1.5}, "iterations"),
        ("centered_clipping", {"include_own": 1}, "include_own"),
        ("clipped_gossip", {"tau": -1.0}, "tau"),
        ("clipped_gossip", {"tau": float("inf")}, "tau"),
    ],
)
def test_parameter_errors_name_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        build(name, params)
