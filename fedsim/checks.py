"""The properties every aggregation rule must have, for your own rule as for the built-ins.

:func:`check_rule` runs them on one rule (a name, as a scenario names it, or an instance) over a
fixed, seeded set of cases; ``tests/test_strategies_properties.py`` checks every registered rule
with the same property functions over cases hypothesis draws. The properties:

* :func:`check_finite` — whatever the senders send (stacks of 1 to 12 vectors mixing ordinary,
  tiny, huge (±1e30), duplicated, zero and NaN/Inf rows; ``f`` from 0 to 3, lowered to the largest
  that the rule's ``check(n, f)`` accepts), ``strategies.aggregate`` never raises and returns a
  finite vector of the own vector's shape, it drops exactly the non-finite rows, and the rule
  itself, called on the sanitized rows, returns finite values of the own vector's shape and dtype
  (so ``aggregate``'s fallback to ``own`` never hides a numerical bug);
* :func:`check_pulls_toward` — fed ``n`` identical vectors ``v`` from honest senders (``f = 0``),
  the rule returns something strictly closer to ``v`` than its own vector is (a rule that ignores
  what it receives fails). A rule documented to accept ``v`` only under conditions (Bristle,
  FLTrust, BALANCE in the tests; ``local`` never) is checked with ``agreement=False``;
* :func:`rule_reads_f` — whether ``f`` changes what the rule does (its ``check(n, f)`` outcome or
  its result); a rule that reads f must not declare ``reads_f = False``, since validation refuses a
  scenario's ``strategy.f`` on that declaration (:func:`check_declared_reads_f`). Declaring
  ``reads_f = True`` for a rule that reads no f is allowed here (it only costs a refusal never
  made; ``Strategy``'s default); the built-ins' tests (``tests/test_unread_fields.py``) demand the
  declaration match exactly;
* :func:`check_seeded` — two fresh copies of the rule, called with ``ctx.generator`` seeded alike,
  return the same result (whatever torch's global generator holds);
* :func:`check_sender_order` — permuting the senders changes nothing (beyond float rounding); run
  by ``tests/test_strategies_properties.py`` on every registered rule except the documented
  order-dependent ones (Bucketing, MDA; Bulyan for ``f`` = 1 or 2), not by :func:`check_rule` (a user's
  rule may depend on the order by design);
* the class has a docstring (``fedsim list`` shows it) and ``check(50, 0)`` accepts a plain setting.

:func:`check_forger`, the same for an update forger, lives in :mod:`fedsim.checks_attacks`;
:func:`check_backbone`, for a backbone, in :mod:`fedsim.checks_backbones`; :func:`check_probe`, for a
probe, in :mod:`fedsim.checks_probes`. All three are re-exported here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace

import torch

import strategies
from fedsim.checks_attacks import check_forger, depends_on_f
from fedsim.checks_backbones import check_backbone
from fedsim.checks_probes import check_probe
from strategies import AggregationContext, aggregate, sanitize

__all__ = [
    "check_backbone", "check_declared_reads_f", "check_finite", "check_forger", "check_probe", "check_pulls_toward",
    "check_rule", "check_seeded", "check_sender_order", "rule_reads_f",
]  # fmt: skip

C, D = 3, 4  # the head the cases use: 3 classes, 4 features, with bias
P = C * D + C
HUGE = 1e30
ROW_KINDS = ("ordinary", "small", "huge", "mixed", "nan", "inf", "own", "repeat", "zero")
OWN_KINDS = ("ordinary", "small", "huge", "mixed", "zero")
NEAR, FAR = 0.05, 3.0  # ||v − own|| / ||own|| of the honest vectors in check_pulls_toward

_gen = torch.Generator().manual_seed(1234)
VAL_X = torch.randn(12, D, generator=_gen)
VAL_Y = torch.tensor([0, 1] * 6)  # class 2 is unfamiliar (Bristle)
ROOT = torch.randn(P, generator=_gen)


def row(kind: str, seed: int) -> torch.Tensor:
    """A length-``P`` float32 row of ``kind`` (one of :data:`ROW_KINDS` but ``own``/``repeat``),
    reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    if kind == "zero":
        return torch.zeros(P)
    if kind == "small":
        return torch.randn(P, generator=g) * 1e-3
    values = torch.randn(P, generator=g) * 3
    if kind == "huge":
        return torch.where(torch.rand(P, generator=g) < 0.5, HUGE, -HUGE)
    if kind == "mixed":
        spots = torch.rand(P, generator=g) < 0.3
        return torch.where(spots, torch.sign(values) * HUGE, values)
    if kind in ("nan", "inf"):
        bad = torch.tensor([float("nan"), float("inf"), float("-inf")])[0 if kind == "nan" else 1 + seed % 2]
        values[int(torch.randint(P, (1,), generator=g))] = bad
    return values


def stack(own: torch.Tensor, kinds: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
    """The received rows ``[n, P]``: one per kind (``own``: a copy of own; ``repeat``: of the row
    before, else an ordinary row)."""
    rows: list[torch.Tensor] = []
    for kind, seed in zip(kinds, seeds, strict=True):
        if kind == "own":
            rows.append(own.clone())
        elif kind == "repeat":
            rows.append(rows[-1].clone() if rows else row("ordinary", seed))
        else:
            rows.append(row(kind, seed))
    return torch.stack(rows)


def context(f: int) -> AggregationContext:
    """The aggregation context of the cases: round 3 of 10, validation data and a root update."""
    return AggregationContext(
        layer_shape=(C, D), bias=True, f=f, round=3, total_rounds=10, val_x=VAL_X, val_y=VAL_Y,
        root_update=ROOT, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def rule_name(rule: strategies.Strategy) -> str:
    """The name the messages give ``rule``: its registered name, else its class's (an unregistered
    class's ``name`` is "")."""
    return getattr(rule, "name", "") or type(rule).__name__


def largest_valid_f(rule: strategies.Strategy, n: int, f: int) -> int | None:
    """The largest ``f' <= f`` that ``rule.check(n, f')`` accepts (None: no f does)."""
    for g in range(f, -1, -1):
        try:
            rule.check(n, g)
            return g
        except ValueError:
            continue
    return None


def check_finite(rule: strategies.Strategy, own: torch.Tensor, received: torch.Tensor, f: int) -> bool:
    """The first property (module docstring) on one case; ``AssertionError`` naming the rule and
    the case when it fails. Returns False when the rule's ``check`` refuses ``n`` for every ``f``
    (nothing checked)."""
    name = rule_name(rule)
    g = largest_valid_f(rule, received.shape[0], f)
    if g is None:
        return False
    where = f"{name}: n={received.shape[0]}, f={g}"
    out, dropped = aggregate(rule, own, received, context(g))
    assert out.shape == own.shape, f"{where}: aggregate returned shape {tuple(out.shape)}, not {tuple(own.shape)}"
    assert bool(torch.isfinite(out).all()), f"{where}: aggregate returned NaN/Inf"
    clean = sanitize(received, P).received
    assert dropped == received.shape[0] - clean.shape[0], f"{where}: {dropped} dropped, not the non-finite rows"
    if clean.shape[0]:
        raw = rule(own, clean, context(g))
        assert raw.shape == own.shape and raw.dtype == own.dtype, (
            f"{where}: the rule returned {tuple(raw.shape)} {raw.dtype}, not {tuple(own.shape)} {own.dtype}"
        )
        assert bool(torch.isfinite(raw).all()), f"{where}: the rule itself produced NaN/Inf"
    return True


def honest_vector(own: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """A vector at distance ``scale · ||own||`` from ``own`` in a direction drawn from ``seed``."""
    d = torch.randn(P, generator=torch.Generator().manual_seed(seed))
    return own + scale * float(own.norm()) * d / d.norm()


def check_pulls_toward(
    rule: strategies.Strategy, own: torch.Tensor, v: torch.Tensor, ctx: AggregationContext, n: int
) -> bool:
    """The second property (module docstring) for ``n`` copies of ``v``; ``AssertionError`` when
    the rule's result (called alone and through ``aggregate``) is not strictly closer to ``v``
    than ``own``. False when ``check(n, 0)`` refuses ``n`` (nothing checked)."""
    if largest_valid_f(rule, n, 0) != 0:
        return False
    name = rule_name(rule)
    received = v.repeat(n, 1)
    before = float((own - v).norm())
    for how, out in (("the rule", rule(own, received, ctx)), ("aggregate", aggregate(rule, own, received, ctx)[0])):
        after = float((out - v).norm())
        assert after < before * (1 - 1e-4), (
            f"{name}: honest agreement: fed n={n} identical vectors v from honest senders (f=0), {how} returned "
            f"a vector no closer to v than own (||out − v|| = {after:.6g}, ||own − v|| = {before:.6g}); a rule "
            "moves toward what every sender agrees on (one that accepts it only under conditions: "
            "check_rule(..., agreement=False) and a test of its own)"
        )
    return True


N_F = 9  # the senders of rule_reads_f's populations


def f_context(f: int, seed: int) -> AggregationContext:
    """The context of :func:`rule_reads_f`'s cases: every optional field a rule may read set, so a
    rule reads f through whichever it uses (the same ``seed`` gives the same fields for every f)."""
    g = torch.Generator().manual_seed(seed)
    return AggregationContext(
        layer_shape=(C, D), f=f, round=1, total_rounds=5, val_x=torch.randn(12, D, generator=g),
        val_y=torch.arange(12) % C, local_classes=torch.ones(C, dtype=torch.bool),
        root_update=torch.randn(P, generator=g), generator=torch.Generator().manual_seed(seed),
        overlap=torch.full((N_F,), C), previous=torch.randn(P, generator=g),
    )  # fmt: skip


def check_sender_order(rule: strategies.Strategy, own: torch.Tensor, received: torch.Tensor, f: int, seed: int) -> None:
    """Sender-order invariance on one case (``received`` generic: no ties among distances or
    coordinates); ``AssertionError`` when permuting the senders (and ``ctx.overlap`` with them)
    changes the result beyond float rounding. A rule's order dependence is a departure a user
    must be told of: Bucketing (random buckets of the given order), MDA (the diameter is one
    pair's distance, so subsets differing elsewhere tie; the lowest indices win) and Bulyan with
    ``f`` = 1 or 2 (its last Krum picks score with one neighbour, so the nearest pair ties and the
    lower sender index wins) are the documented ones."""
    name = rule_name(rule)
    n = received.shape[0]
    overlap = torch.arange(n) % (C + 1)  # per-sender context follows its sender
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    a = copy.deepcopy(rule)(own, received, replace(f_context(f, seed), overlap=overlap))
    b = copy.deepcopy(rule)(own, received[perm], replace(f_context(f, seed), overlap=overlap[perm]))
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (
        f"{name}: sender order: permuting the {received.shape[0]} senders (f={f}) changed the result "
        f"(max |Δ| = {float((a - b).abs().max()):.3g})"
    )


def check_seeded(rule: strategies.Strategy, own: torch.Tensor, received: torch.Tensor, f: int, seed: int) -> None:
    """Determinism given a seed on one case; ``AssertionError`` when two fresh copies of ``rule``
    called with generators seeded alike (``ctx.generator``) return different results (a rule that
    draws from torch's global generator, or shares state between copies (class-level), fails; state a
    copy keeps on itself between calls is not seen: each copy is called once)."""
    name = rule_name(rule)
    ctx = replace(f_context(f, seed), overlap=torch.full((received.shape[0],), C))
    with torch.random.fork_rng(devices=[]):  # the global generator differs between the calls, restored after
        torch.manual_seed(seed)
        a = copy.deepcopy(rule)(own, received, ctx)
        torch.manual_seed(seed + 1)
        b = copy.deepcopy(rule)(own, received, replace(ctx, generator=torch.Generator().manual_seed(seed)))
    assert torch.equal(a, b), f"{name}: determinism: two calls with ctx.generator seeded alike (seed={seed}) differ"


def rule_reads_f(rule: strategies.Strategy) -> bool:
    """Whether ``f`` changes what ``rule`` does: its ``check(n, f)`` outcome for some ``n`` (1 to
    12, f 0 to 5), or its result on six random populations of :data:`N_F` senders, with outliers
    or without (f 0, 1, 3, each with the same seeds)."""
    if depends_on_f(rule.check, range(1, 13), lambda n: range(6)):
        return True
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        own, received = torch.randn(P, generator=g), torch.randn(N_F, P, generator=g)
        if seed % 2:  # outliers: what f tells a robust rule to discard (else candidates that MOZI may keep)
            received[:3] *= 20
        # a fresh copy for each f: a rule keeping state between calls (momentum) must not look like reading f
        outs = [copy.deepcopy(rule)(own, received, f_context(f, seed)) for f in (0, 1, 3)]
        if any(not torch.allclose(outs[0], o, equal_nan=True) for o in outs[1:]):
            return True
    return False


def check_declared_reads_f(rule: strategies.Strategy) -> None:
    """The third property (module docstring); ``AssertionError`` when ``rule`` reads f but declares
    ``reads_f = False``."""
    name = rule_name(rule)
    assert rule.reads_f or not rule_reads_f(rule), (
        f"{name}: f (ctx.f or check's f) changes what it does but it says reads_f = False "
        "(validation would refuse a scenario's strategy.f for it)"
    )


def check_rule(
    rule: strategies.Strategy | str,
    *,
    cases: int = 200,
    agreement: bool = True,
    seed: int = 0,
    plugins: Sequence[str] = (),
) -> int:
    """Check ``rule`` (an instance, or a registered name built with its defaults) against the
    properties of the module docstring over ``cases`` seeded cases (and, with ``agreement``, the
    honest-agreement property for 1 to 12 senders, near and far); ``AssertionError`` naming the
    property and the case at the first failure. ``plugins``: the files or modules that register
    it (as ``fedsim.run``'s). Returns the number of cases checked (those the rule's ``check``
    accepts), plus one for the ``reads_f`` declaration."""
    if plugins:
        from fedsim import plugins as plugin_mod

        plugin_mod.load(plugin_mod.grant(plugins))
    if isinstance(rule, str):
        rule = strategies.build(rule)
    cls = type(rule)
    assert (cls.__doc__ or "").strip() and not cls.__doc__.startswith(f"{cls.__name__}("), (
        f"{cls.__name__}: no docstring (fedsim list shows it)"
    )
    try:
        rule.check(50, 0)
    except ValueError as e:  # as check_forger says it: the property, not the rule's bare ValueError
        raise AssertionError(f"{rule_name(rule)}: check(n=50, f=0) refuses a plain setting: {e}") from e
    g = torch.Generator().manual_seed(seed)

    def pick(options: Sequence[str]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    def draw_seed() -> int:
        return int(torch.randint(2**31 - 1, (1,), generator=g))

    checked = 0
    for _ in range(cases):
        own = row(pick(OWN_KINDS), draw_seed())
        n = int(torch.randint(1, 13, (1,), generator=g))
        kinds = [pick(ROW_KINDS) for _ in range(n)]
        received = stack(own, kinds, [draw_seed() for _ in range(n)])
        checked += check_finite(rule, own, received, int(torch.randint(0, 4, (1,), generator=g)))
    if agreement:
        for n in range(1, 13):
            for scale in (NEAR, FAR):
                own = row(pick(("ordinary", "small")), draw_seed())
                checked += check_pulls_toward(rule, own, honest_vector(own, scale, draw_seed()), context(0), n)
    for s in range(6):  # determinism given a seed, on rule_reads_f's populations
        gs = torch.Generator().manual_seed(s)
        own, received = torch.randn(P, generator=gs), torch.randn(N_F, P, generator=gs)
        f = largest_valid_f(rule, N_F, s % 3)
        if f is not None:
            check_seeded(rule, own, received, f, s)
    check_declared_reads_f(rule)
    return checked + 1
