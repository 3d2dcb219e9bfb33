"""Properties every registered rule must have, whatever the senders send.

For every rule in ``strategies.REGISTRY`` (built with its defaults), hypothesis feeds stacks of
1 to 12 received vectors mixing ordinary, huge (±1e30), duplicated, zero and NaN/Inf rows through
``strategies.aggregate``: it never raises (unless ``check(n, f)`` rejects the configuration, in
which case the example is skipped), never returns NaN/Inf, and keeps the own vector's shape. The
rule itself (called on the sanitized stack, without ``aggregate``'s fallback to ``own``) must also
return finite values, so that the fallback never hides a numerical bug.
"""

from __future__ import annotations

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

ordinary = st.floats(-10.0, 10.0, allow_nan=False, width=32)
huge = st.sampled_from([HUGE, -HUGE])


def _vector(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@st.composite
def own_vectors(draw: st.DrawFn) -> torch.Tensor:
    kind = draw(st.sampled_from(["ordinary", "huge", "mixed", "zero"]))
    if kind == "zero":
        return torch.zeros(P)
    elem = {"ordinary": ordinary, "huge": huge, "mixed": st.one_of(ordinary, huge)}[kind]
    return _vector(draw(st.lists(elem, min_size=P, max_size=P)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor, int]:
    own = draw(own_vectors())
    n = draw(st.integers(1, 12))
    rows: list[torch.Tensor] = []
    for _ in range(n):
        kind = draw(st.sampled_from(["ordinary", "huge", "mixed", "nan", "inf", "own", "repeat", "zero"]))
        if kind == "own":
            rows.append(own.clone())
        elif kind == "repeat" and rows:
            rows.append(rows[-1].clone())
        elif kind == "zero":
            rows.append(torch.zeros(P))
        elif kind in ("nan", "inf"):
            row = _vector(draw(st.lists(ordinary, min_size=P, max_size=P)))
            bad = float("nan") if kind == "nan" else draw(st.sampled_from([float("inf"), float("-inf")]))
            row[draw(st.integers(0, P - 1))] = bad
            rows.append(row)
        else:
            elem = {"ordinary": ordinary, "huge": huge}.get(kind, st.one_of(ordinary, huge))
            rows.append(_vector(draw(st.lists(elem, min_size=P, max_size=P))))
    return own, torch.stack(rows), draw(st.integers(0, 3))


def context(f: int) -> AggregationContext:
    return AggregationContext(
        layer_shape=(C, D), bias=True, f=f, round=3, total_rounds=10, val_x=VAL_X, val_y=VAL_Y,
        root_update=ROOT, generator=torch.Generator().manual_seed(0),
    )


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_aggregate_never_fails_and_never_returns_non_finite(name: str) -> None:
    rule = build(name)

    @settings(max_examples=200, deadline=None, database=None)
    @given(case=cases())
    def run(case: tuple[torch.Tensor, torch.Tensor, int]) -> None:
        own, received, f = case
        try:
            rule.check(received.shape[0], f)
        except ValueError:
            event("skipped: check(n, f) rejects the configuration")
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

    run()


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
