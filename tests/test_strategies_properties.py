"""Properties every registered rule must have, whatever the senders send.

For every rule in ``strategies.REGISTRY`` (built with its defaults), hypothesis feeds stacks of
1 to 12 received vectors mixing ordinary, huge (±1e30), duplicated, zero and NaN/Inf rows through
``strategies.aggregate``: it never raises (unless ``check(n, f)`` rejects the configuration: then
the largest smaller f that ``check`` accepts is used, and the example is skipped when there is
none), never returns NaN/Inf, and keeps the own vector's shape. The
rule itself (called on the sanitized stack, without ``aggregate``'s fallback to ``own``) must also
return finite values, so that the fallback never hides a numerical bug.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

import strategies
from strategies import REGISTRY, AggregationContext, aggregate, build, sanitize

C, D = 3, 4
P = C * D + C
_gen = torch.Generator().manual_seed(1234)
VAL_X = torch.randn(12, D, generator=_gen)
VAL_Y = torch.tensor([0, 1] * 6)  # class 2 is unfamiliar (Bristle)
ROOT = torch.randn(P, generator=_gen)
HUGE = 1e30

ROW_KINDS = ["ordinary", "small", "huge", "mixed", "nan", "inf", "own", "repeat", "zero"]


def _values(kind: str, seed: int) -> torch.Tensor:
    """A length-P float32 row of the given kind, reproducible from ``seed`` (one hypothesis draw
    per row keeps generation cheap; hypothesis still chooses and shrinks kinds and seeds)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "zero":
        return torch.zeros(P)
    if kind == "small":
        return torch.randn(P, generator=g) * 1e-3
    row = torch.randn(P, generator=g) * 3
    if kind == "huge":
        return torch.where(torch.rand(P, generator=g) < 0.5, HUGE, -HUGE)
    if kind == "mixed":
        spots = torch.rand(P, generator=g) < 0.3
        return torch.where(spots, torch.sign(row) * HUGE, row)
    if kind in ("nan", "inf"):
        bad = torch.tensor([float("nan"), float("inf"), float("-inf")])[0 if kind == "nan" else 1 + seed % 2]
        row[int(torch.randint(P, (1,), generator=g))] = bad
    return row


seeds = st.integers(0, 2**32 - 1)


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    own = _values(draw(st.sampled_from(["ordinary", "small", "huge", "mixed", "zero"])), draw(seeds))
    n = draw(st.integers(1, 12))
    rows: list[torch.Tensor] = []
    for _ in range(n):
        kind = draw(st.sampled_from(ROW_KINDS))
        if kind == "own":
            rows.append(own.clone())
        elif kind == "repeat" and rows:
            rows.append(rows[-1].clone())
        else:
            rows.append(_values(kind, draw(seeds)))
    return own, torch.stack(rows), draw(st.integers(0, 3))


def context(f: int) -> AggregationContext:
    return AggregationContext(
        layer_shape=(C, D), bias=True, f=f, round=3, total_rounds=10, val_x=VAL_X, val_y=VAL_Y,
        root_update=ROOT, generator=torch.Generator().manual_seed(0),
    )


RULES = {name: build(name) for name in sorted(REGISTRY)}


def _largest_valid_f(rule: strategies.Strategy, n: int, f: int) -> int | None:
    """The largest ``f' <= f`` that ``rule.check(n, f')`` accepts (None: the configuration is
    invalid for every f, so the example is skipped)."""
    for g in range(f, -1, -1):
        try:
            rule.check(n, g)
            return g
        except ValueError:
            continue
    return None


@pytest.mark.parametrize("name", sorted(REGISTRY))
@settings(max_examples=200, deadline=None, database=None)
@given(case=cases())
def test_aggregate_never_fails_and_never_returns_non_finite(name: str, case) -> None:
    rule = RULES[name]
    own, received, drawn_f = case
    f = _largest_valid_f(rule, received.shape[0], drawn_f)
    if f is None:
        event("skipped: check(n, f) rejects the configuration even with f = 0")
        return
    out, dropped = aggregate(rule, own, received, context(f))
    assert out.shape == own.shape
    assert bool(torch.isfinite(out).all())
    clean = sanitize(received, P).received
    assert dropped == received.shape[0] - clean.shape[0]
    if clean.shape[0]:
        raw = rule(own, clean, context(f))
        assert raw.shape == own.shape and raw.dtype == own.dtype
        assert bool(torch.isfinite(raw).all()), "the rule itself produced NaN/Inf"


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
        if _largest_valid_f(RULES[name], received.shape[0], f) != f:
            continue
        out = RULES[name](own, received, context(f))
        assert bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------- honest agreement
# Every rule, fed n identical vectors v from honest senders (f = 0, the rule's defaults), must
# return something strictly closer to v than its own vector is: a rule that ignores what it
# receives (e.g. a FedAvg that returns ``own``) fails here. The settings below state the
# conditions under which each rule is documented to accept v; a newly registered rule gets the
# generic setting (any v) and must pass it or add its own documented setting here.
NEAR, FAR = 0.05, 3.0  # ||v − own|| / ||own||


def _honest_vector(own: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    d = torch.randn(P, generator=torch.Generator().manual_seed(seed))
    return own + scale * float(own.norm()) * d / d.norm()


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
    v = _honest_vector(own, scale, seed)
    return v, replace(context(0), root_update=v.clone())


def _balance_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    """BALANCE accepts only vectors within γ·exp(−κ t/T)·||own|| of own (0.22·||own|| in round 3
    of 10 with the defaults); farther ones are rejected by design (see the test below)."""
    return _honest_vector(own, NEAR, seed), context(0)


def _generic_setting(own: torch.Tensor, scale: float, seed: int) -> tuple[torch.Tensor, AggregationContext]:
    return _honest_vector(own, scale, seed), context(0)


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
    rule = RULES[name]
    if _largest_valid_f(rule, n, 0) != 0:
        event("skipped: check(n, 0) rejects n")
        return
    own = _values(own_kind, own_seed)
    v, ctx = AGREEMENT_SETTINGS.get(name, _generic_setting)(own, scale, v_seed)
    received = v.repeat(n, 1)
    before = float((own - v).norm())
    for out in (rule(own, received, ctx), aggregate(rule, own, received, ctx)[0]):
        after = float((out - v).norm())
        assert after < before * (1 - 1e-4), f"{name}: ||out − v|| = {after:.6g}, ||own − v|| = {before:.6g} (n={n})"


def test_rules_documented_to_keep_own_do() -> None:
    """The exceptions above, pinned: ``local`` always keeps own; BALANCE keeps own when every
    received vector lies beyond its acceptance radius; FLTrust keeps own when the updates point
    against the root update."""
    own = _values("ordinary", 7)
    v = _honest_vector(own, FAR, 8)
    assert torch.equal(RULES["local"](own, v.repeat(4, 1), context(0)), own)
    assert torch.equal(RULES["balance"](own, v.repeat(4, 1), context(0)), own)
    against = replace(context(0), root_update=own - (v - own))
    assert torch.equal(RULES["fltrust"](own, v.repeat(4, 1), against), own)
