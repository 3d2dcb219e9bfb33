"""The ByzFL-parity rules on hand-checked inputs: geometric median (RFA), MDA, ARC, bucketing.

Vectors are ``P = 2`` flattened ``(1, 2)`` weights (no bias) unless a test says otherwise; the
federated setting (``include_own=False``) makes the expected values easy to state."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedsim.scenario import ScenarioError, parse
from strategies import AggregationContext, build
from strategies.arc import arc_clip, arc_count
from strategies.bucketing import bucket_means
from strategies.geomed import smoothed_weiszfeld
from strategies.mda import min_diameter_subset


def ctx(f: int = 0, seed: int = 0, p: int = 2) -> AggregationContext:
    return AggregationContext(layer_shape=(1, p), bias=False, f=f, generator=torch.Generator().manual_seed(seed))


def pts(*xy) -> torch.Tensor:
    return torch.tensor(xy, dtype=torch.float32)


# --------------------------------------------------------------------------- geometric median


def test_geomed_of_collinear_points_is_their_median_not_their_mean() -> None:
    d = torch.tensor([0.6, 0.8])
    x = torch.stack([a * d for a in (0.0, 1.0, 10.0)])
    out = build("geomed", {"include_own": False})(torch.zeros(2), x, ctx())
    assert torch.allclose(out, d, atol=1e-5)  # the mean would be 11/3 · d


def test_geomed_is_the_vertex_where_the_unit_pulls_balance() -> None:
    # at the origin the other points' unit vectors sum to norm 0.79 <= 1, so the origin is the
    # geometric median (Weiszfeld's optimality condition); mean and coordinate median are (0.5, 0.5)
    x = pts([0, 0], [3, 1], [1, 3], [-2, -2])
    out = build("geomed", {"include_own": False, "nu": 1e-9, "max_iterations": 2000, "tolerance": 0.0})(
        torch.ones(2), x, ctx())
    assert float(out.norm()) < 1e-3


def test_geomed_one_iteration_is_one_weiszfeld_step_from_the_mean() -> None:
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    z, t = smoothed_weiszfeld(x, nu=1e-6, max_iterations=1, tolerance=0.0)
    m = 11 / 3
    beta = [1 / m, 1 / abs(1 - m), 1 / abs(10 - m)]
    assert t == 1 and float(z[0]) == pytest.approx((1 * beta[1] + 10 * beta[2]) / sum(beta), rel=1e-12)


def test_geomed_smoothing_floors_the_distances_at_nu() -> None:
    # with ν larger than every distance all weights are equal: the result stays the mean
    x = torch.tensor([[0.0], [1.0], [10.0]], dtype=torch.float64)
    z, _ = smoothed_weiszfeld(x, nu=100.0, max_iterations=10, tolerance=0.0)
    assert float(z[0]) == pytest.approx(11 / 3)


def test_geomed_includes_own_and_checks_honest_majority() -> None:
    own = torch.tensor([1.0, 1.0])
    x = pts([1, 1], [9, 9])
    assert torch.allclose(build("geomed")(own, x, ctx()), own, atol=1e-4)  # 2 of 3 at own
    build("geomed").check(2, 1)
    with pytest.raises(ValueError, match=r"geomed needs n \(received\) >= 2f \+ 1"):
        build("geomed", {"include_own": False}).check(2, 1)
    for bad in ({"nu": 0}, {"max_iterations": 0}, {"tolerance": -1}):
        with pytest.raises(ValueError, match=f"^{next(iter(bad))}:"):
            build("geomed", bad)


# --------------------------------------------------------------------------- MDA


def test_mda_averages_the_subset_of_smallest_diameter() -> None:
    x = torch.tensor([[0.0, 0], [3, 0], [5, 0], [6.5, 0]])
    out = build("mda", {"include_own": False})(torch.zeros(2), x, ctx(f=1))
    assert torch.allclose(out, torch.tensor([(3 + 5 + 6.5) / 3, 0.0]))  # {3, 5, 6.5}: diameter 3.5


def test_mda_minimises_the_diameter_not_the_sum_of_distances() -> None:
    # an equilateral triangle of side 2 (diameter 2, pairwise distances summing to 6) and, far
    # away, a thin triangle of diameter 2.1 whose distances sum to 4.21: MDA takes the first; a
    # mutant minimising the sum (or the sum of squares, MVA) takes the second
    tri = [[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3)]]
    thin = [[10.0, 0.0], [10.0, 0.01], [12.1, 0.0]]
    x = torch.tensor(tri + thin, dtype=torch.float64)
    assert min_diameter_subset(x, 3) == (0, 1, 2)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(7, 3, generator=g, dtype=torch.float64)
    s = min_diameter_subset(y, 4)

    def diameter(c) -> float:
        return max(float((y[i] - y[j]).norm()) for i, j in itertools.combinations(c, 2))

    assert diameter(s) == min(diameter(c) for c in itertools.combinations(range(7), 4))


def test_mda_ties_go_to_the_first_subset_and_f0_is_the_mean() -> None:
    x = torch.tensor([[0.0, 0], [4, 0], [5, 0], [9, 0]])  # {0,4,5} and {4,5,9} both have diameter 5
    assert torch.allclose(build("mda", {"include_own": False})(torch.zeros(2), x, ctx(f=1)), torch.tensor([3.0, 0]))
    assert torch.allclose(build("mda", {"include_own": False})(torch.zeros(2), x, ctx(f=0)), x.mean(dim=0))


def test_mda_refuses_searches_over_the_cap_with_a_clear_error() -> None:
    rule = build("mda", {"include_own": False, "max_subsets": 1000})
    rule.check(14, 3)  # C(14, 3) = 364
    with pytest.raises(ValueError, match=r"C\(N, f\) = C\(20, 5\) = 15504 subsets exceeds max_subsets = 1000"):
        rule.check(20, 5)
    with pytest.raises(ValueError, match="max_subsets"):
        rule(torch.zeros(2), torch.randn(20, 2), ctx(f=5))
    with pytest.raises(ValueError, match=r"mda needs n \+ 1 \(received \+ own\) >= 2f \+ 1"):
        build("mda").check(3, 2)


# --------------------------------------------------------------------------- ARC


def test_arc_count_is_the_exact_floor() -> None:
    assert [arc_count(5, f) for f in range(5)] == [0, 1, 2, 2, 1]  # ⌊2f(5−f)/5⌋
    assert arc_count(10, 3) == 4
    assert arc_count(121, 66) == 60  # float arithmetic (ByzFL) gives 59 here


def test_arc_clips_the_k_largest_to_the_next_largest_norm() -> None:
    order = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    u = torch.tensor([[float(i), 0.0] for i in range(1, 11)], dtype=torch.float64)[order]
    clipped, k, tau = arc_clip(u, 3)
    assert k == 4 and tau == 6.0
    norms = sorted(float(v) for v in clipped.norm(dim=1))
    assert norms == pytest.approx([1, 2, 3, 4, 5, 6, 6, 6, 6, 6], rel=1e-12)
    assert torch.equal(clipped[u.norm(dim=1) <= 6], u[u.norm(dim=1) <= 6])  # the others untouched


def test_arc_clips_updates_around_own_then_runs_the_inner_rule() -> None:
    own = torch.tensor([10.0, -10.0])
    u = pts([1, 0], [2, 0], [3, 0], [4, 0], [0, 5])  # n = 5, f = 1: k = 1, τ = 4
    rule = build("arc", {"inner": "fedavg", "include_own": False})
    out = rule(own, own + u, ctx(f=1))
    assert torch.allclose(out, own + torch.tensor([10 / 5, 4 / 5]))
    assert torch.allclose(rule(own, own + u, ctx(f=0)), own + u.mean(dim=0))  # f = 0 clips nothing
    # include_own reaches the inner rule: fedavg then averages own (update 0) too
    assert torch.allclose(build("arc", {"inner": "fedavg"})(own, own + u, ctx(f=1)),
                          own + torch.tensor([10 / 6, 4 / 6]))


def test_arc_check_and_needs_follow_the_inner_rule() -> None:
    with pytest.raises(ValueError, match="krum needs"):
        build("arc", {"inner": "krum"}).check(3, 1)
    assert build("arc", {"inner": "fltrust"}).needs == build("fltrust").needs
    with pytest.raises(ValueError, match="^inner: unknown strategy 'krun'"):
        build("arc", {"inner": "krun"})


# --------------------------------------------------------------------------- bucketing


def test_bucketing_with_s1_is_the_inner_rule() -> None:
    g = torch.Generator().manual_seed(3)
    own, x = torch.randn(2, generator=g), torch.randn(7, 2, generator=g)
    for include_own in (True, False):
        got = build("bucketing", {"s": 1, "inner": "median", "include_own": include_own})(own, x, ctx(f=1))
        assert torch.equal(got, build("median", {"include_own": include_own})(own, x, ctx(f=1)))


def test_bucket_means_follow_the_seeded_permutation() -> None:
    x = torch.arange(10, dtype=torch.float64).reshape(5, 2)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(11))
    want = torch.stack([x[perm[:2]].mean(0), x[perm[2:4]].mean(0), x[perm[4:]].mean(0)])  # last bucket: 1
    got = bucket_means(x, 2, torch.Generator().manual_seed(11))
    assert torch.equal(got, want)
    assert torch.equal(bucket_means(x, 2, torch.Generator().manual_seed(11)), got)  # reproducible
    others = {tuple(bucket_means(x, 2, torch.Generator().manual_seed(s)).flatten().tolist()) for s in range(20)}
    assert len(others) > 1  # the seed matters


def test_bucketing_hands_bucket_means_to_the_inner_rule() -> None:
    x = torch.tensor([[0.0, 0], [2, 0], [10, 0], [12, 0], [100, 0]])
    rule = build("bucketing", {"s": 2, "inner": "median", "include_own": False})
    c = ctx(f=1, seed=5)
    means = bucket_means(x, 2, torch.Generator().manual_seed(5)).float()
    assert torch.equal(rule(torch.zeros(2), x, c), build("median", {"include_own": False})(torch.zeros(2), means, c))
    assert rule._inner.include_own is False  # passed down
    with pytest.raises(ValueError, match="generator"):
        rule(torch.zeros(2), x, AggregationContext(layer_shape=(1, 2), bias=False))


def test_bucketing_checks_the_inner_rule_on_the_bucket_count() -> None:
    rule = build("bucketing", {"s": 2, "inner": "krum", "include_own": False})
    rule.check(10, 1)  # 5 buckets > 2f + 2 = 4
    want = r"bucketing \(s=2: 4 bucket means from 8 vectors\): krum needs n \(received\) > 2f \+ 2, got 4"
    with pytest.raises(ValueError, match=want):
        rule.check(8, 1)
    with pytest.raises(ValueError, match="^s: must be an integer >= 1"):
        build("bucketing", {"s": 0})
    assert "generator" in rule.needs


# --------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("name,params", [
    ("geomed", {}), ("mda", {}), ("arc", {"inner": "trimmed_mean"}), ("bucketing", {"s": 2}),
])
def test_rules_are_usable_from_a_scenario(small_scenario, name, params) -> None:
    d = small_scenario(mode="federated", **{"topology.kind": "star", "peers.count": 10, "peers.byzantine": 2,
                                            "peers.attack": {"name": "gaussian"},
                                            "strategy": {"name": name, "params": params}})
    assert parse(d).strategy.name == name


def test_mda_cap_is_a_validation_error(small_scenario) -> None:
    d = small_scenario(mode="federated", **{"topology.kind": "star", "peers.count": 12, "peers.byzantine": 4,
                                            "peers.attack": {"name": "gaussian"},
                                            "strategy": {"name": "mda", "params": {"max_subsets": 100}}})
    with pytest.raises(ScenarioError, match=r"strategy.name: mda: .*C\(12, 4\) = 495 subsets exceeds max_subsets"):
        parse(d)


def test_bucketing_with_fewer_vectors_than_s_makes_one_bucket() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    got = bucket_means(x, 5, torch.Generator().manual_seed(0))
    assert torch.equal(got, torch.tensor([[2.0, 4.0]], dtype=torch.float64))


@pytest.mark.parametrize("mode", ["federated", "decentralized"])
def test_the_rules_run_end_to_end_in_process(small_scenario, mode) -> None:
    from fedsim.runner import Run

    topo = {"topology.kind": "star"} if mode == "federated" else {"topology.degree": 6, "strategy.f": 1}
    for name, params in [("geomed", {}), ("mda", {}), ("arc", {"inner": "trimmed_mean"}), ("bucketing", {})]:
        d = small_scenario(name=f"{name}-{mode}", mode=mode, rounds=3, **topo, **{
            "peers.count": 10, "peers.byzantine": 2, "peers.attack": {"name": "sign_flip"},
            "strategy.name": name, "strategy.params": params})
        r = Run(parse(d))
        r.create_dir()
        summary = r.execute()
        # 3 rounds from scratch: 0.30-0.42 measured (10 classes, chance 0.1)
        assert summary["final_accuracy_mean"] > 0.25, (name, mode, summary["final_accuracy_mean"])
