"""Properties every registered rule must have, whatever the senders send (the property functions
are fedsim.checks', which check_rule runs on a user's own rule).

For every rule in ``strategies.REGISTRY`` (built with its defaults), hypothesis feeds stacks of
1 to 12 received vectors mixing ordinary, huge (±1e30), duplicated, zero and NaN/Inf rows through
``strategies.aggregate``: it never raises (unless ``check(n, f)`` rejects the configuration: then
the largest smaller f that ``check`` accepts is used, and the example is skipped when there is
none), never returns NaN/Inf, and keeps the own vector's shape. The
rule itself (called on the sanitized stack, without ``aggregate``'s fallback to ``own``) must also
return finite values, so that the fallback never hides a numerical bug.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import strategies
from fedsim.checks import (
    FAR,
    NEAR,
    OWN_KINDS,
    ROW_KINDS,
    C,
    D,
    P,
    check_finite,
    check_pulls_toward,
    check_seeded,
    check_sender_order,
    context,
    honest_vector,
    largest_valid_f,
    stack,
)
from fedsim.checks import row as _values
from strategies import REGISTRY, AggregationContext, build

seeds = st.integers(0, 2**32 - 1)


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    own = _values(draw(st.sampled_from(OWN_KINDS)), draw(seeds))
    n = draw(st.integers(1, 12))
    kinds = [draw(st.sampled_from(ROW_KINDS)) for _ in range(n)]
    return own, stack(own, kinds, [draw(seeds) for _ in range(n)]), draw(st.integers(0, 3))


RULES = {name: build(name) for name in sorted(REGISTRY)}


@pytest.mark.parametrize("name", sorted(REGISTRY))
@settings(max_examples=200, deadline=None, database=None)
@given(case=cases())
def test_aggregate_never_fails_and_never_returns_non_finite(name: str, case) -> None:
    own, received, drawn_f = case
    if not check_finite(RULES[name], own, received, drawn_f):
        event("skipped: check(n, f) rejects the configuration even with f = 0")


def test_every_rule_has_defaults_a_docstring_and_a_working_check() -> None:
    for name, cls in REGISTRY.items():
        rule = build(name)
        assert cls.name == name and (cls.__doc__ or "").strip()
        rule.check(50, 0)
        if cls.check is not strategies.Strategy.check:
            with pytest.raises(ValueError, match="^f:"):
                rule.check(50, -1)
        assert strategies.available()[name]


def test_unknown_parameters_are_rejected_with_the_rule_name() -> None:
    for name in REGISTRY:
        with pytest.raises(ValueError, match=name):
            build(name, {"no_such_parameter": 1})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_rules_stay_finite_near_the_float32_limit(name: str) -> None:
    # regressions from a longer run with entries of ±3e38 and up to 25 senders: Bristle's zero-mean
    # step and fedavg's float32 sum overflowed to inf (now float64 + saturation in ``to_like``)
    g = torch.Generator().manual_seed(5)
    own = torch.where(torch.rand(P, generator=g) < 0.5, 3e38, -3e38)
    received = torch.cat([torch.randn(1, P, generator=g), -own[None], own[None].clone(), own[None] * 0.5])
    for f in (0, 1):
        if largest_valid_f(RULES[name], received.shape[0], f) != f:
            continue
        out = RULES[name](own, received, context(f))
        assert bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------- honest agreement
# Every rule, fed n identical vectors v from honest senders (f = 0, the rule's defaults), must
# return something strictly closer to v than its own vector is: a rule that ignores what it
# receives (e.g. a FedAvg that returns ``own``) fails here. The settings below state the
# conditions under which each rule is documented to accept v; a newly registered rule gets the
# generic setting (any v) and must pass it or add its own documented setting here.
def _bristle_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    """Bristle integrates a candidate's class row only where it scores at least as well as own on
    the peer's validation set, then removes each class row's mean: v here classifies the
    validation set perfectly (class c's samples sit on feature c) and has zero-mean rows."""
    w = torch.eye(C, D) - torch.eye(C, D).mean(dim=1, keepdim=True)
    v = torch.cat([w.flatten(), torch.zeros(C)])
    val_y = torch.tensor([0, 1] * 6)
    val_x = 2 * torch.eye(C, D)[val_y] + 0.01 * torch.randn(12, D, generator=torch.Generator().manual_seed(seed))
    return v, replace(context(0), val_x=val_x, val_y=val_y)


def _fltrust_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    """FLTrust trusts an update as far as it agrees with the root update (own trained on the
    server's trusted data): here the root update points at the honest vectors."""
    v = honest_vector(own, scale, seed)
    return v, replace(context(0), root_update=v.clone())


def _balance_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    """BALANCE accepts only vectors within γ·exp(−κ t/T)·||own|| of own (0.22·||own|| in round 3
    of 10 with the defaults); farther ones are rejected by design (see the test below)."""
    return honest_vector(own, NEAR, seed), context(0)


def _generic_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    return honest_vector(own, scale, seed), context(0)


AGREEMENT_SETTINGS = {"bristle": _bristle_setting, "fltrust": _fltrust_setting, "balance": _balance_setting}
KEEPS_OWN = {"local"}  # documented: no aggregation


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - KEEPS_OWN))
@settings(max_examples=25, deadline=None, database=None)
@given(
    own_kind=st.sampled_from(["ordinary", "small"]),
    own_seed=seeds,
    v_seed=seeds,
    scale=st.sampled_from([NEAR, FAR]),
    n=st.integers(1, 12),
)
def test_identical_honest_vectors_pull_every_rule_toward_them(name, own_kind, own_seed, v_seed, scale, n) -> None:
    own = _values(own_kind, own_seed)
    v, ctx = AGREEMENT_SETTINGS.get(name, _generic_setting)(own, scale, v_seed)
    if not check_pulls_toward(RULES[name], own, v, ctx, n):
        event("skipped: check(n, 0) rejects n")


def test_rules_documented_to_keep_own_do() -> None:
    """The exceptions above, pinned: ``local`` always keeps own; BALANCE keeps own when every
    received vector lies beyond its acceptance radius; FLTrust keeps own when the updates point
    against the root update."""
    own = _values("ordinary", 7)
    v = honest_vector(own, FAR, 8)
    assert torch.equal(RULES["local"](own, v.repeat(4, 1), context(0)), own)
    assert torch.equal(RULES["balance"](own, v.repeat(4, 1), context(0)), own)
    against = replace(context(0), root_update=own - (v - own))
    assert torch.equal(RULES["fltrust"](own, v.repeat(4, 1), against), own)


# --------------------------------------------------------------------------- seeds and sender order
# Every rule is deterministic given ctx.generator's seed; every rule not documented as order
# dependent gives the same result whatever order the senders come in (generic populations: 12
# senders, with and without outliers, every f from 0 to 3 that the rule's check accepts).
# bucketing: random buckets of the given order (invariant in distribution only); mda: the diameter is
# one pair's distance, so subsets that differ elsewhere tie (lexicographic index order wins)
ORDER_DEPENDENT = {"bucketing", "mda"}
FEW_F_ORDER_DEPENDENT = {"bulyan": {1, 2}}  # the last Krum picks tie (one neighbour), lower index wins


def _population(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    own, received = torch.randn(P, generator=g), torch.randn(16, P, generator=g)
    if seed % 2:
        received[:3] *= 20
    return own, received


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_rule_is_deterministic_given_the_seed(name: str) -> None:
    for seed in range(4):
        own, received = _population(seed)
        for f in range(4):
            if largest_valid_f(RULES[name], received.shape[0], f) == f:
                check_seeded(RULES[name], own, received, f, seed)


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - ORDER_DEPENDENT))
def test_every_rule_ignores_the_sender_order(name: str) -> None:
    checked = 0
    for seed in range(4):
        own, received = _population(seed)
        for f in range(4):
            if f not in FEW_F_ORDER_DEPENDENT.get(name, ()) and largest_valid_f(RULES[name], received.shape[0], f) == f:
                check_sender_order(RULES[name], own, received, f, seed)
                checked += 1
    assert checked


def test_the_documented_order_dependence_is_real() -> None:
    """The exceptions above, pinned (if one goes away, drop it from the lists and the docs)."""
    own, received = _population(0)
    with pytest.raises(AssertionError, match="sender order"):
        check_sender_order(RULES["bucketing"], own, received, 1, 0)
    with pytest.raises(AssertionError, match="sender order"):
        check_sender_order(RULES["bulyan"], own, received, 1, 0)
    with pytest.raises(AssertionError, match="sender order"):
        check_sender_order(RULES["mda"], *_population(2), 3, 2)


# --------------------------------------------------------------------------- the stated f bound
# A rule whose `fedsim list` text states its population bound (``N >= af + b`` or ``N > af + b``,
# ``N = n + 1`` with the default include_own) refuses exactly below it: the smallest n its check
# accepts for f = 0..4 is the bound's.
BOUND = re.compile(r"``N (>=|>) (\d)f \+ (\d)``")
STATED = sorted(n for n, cls in REGISTRY.items() if BOUND.search(" ".join(cls.__doc__.split())))


@pytest.mark.parametrize("name", STATED)
def test_the_stated_f_bound_is_the_one_check_enforces(name: str) -> None:
    (op, a, b), *rest = BOUND.findall(" ".join(REGISTRY[name].__doc__.split()))
    assert all(r == (op, a, b) for r in rest), f"{name}: its text states more than one bound"
    rule = build(name)
    assert getattr(rule, "include_own", True)
    for f in range(5):
        smallest_big_n = int(a) * f + int(b) + (op == ">")  # the smallest N the text allows
        accepted = [n for n in range(40) if largest_valid_f(rule, n, f) == f]
        assert accepted and accepted[0] == smallest_big_n - 1, (name, f, accepted[:1], smallest_big_n)
