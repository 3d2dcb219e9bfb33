"""Bristle's integrator in float32 (``precision="float32"``, issue 19: the 100,000-peer round).

The authors' DL4J/ND4J arrays are float32; fedsim's default computes in float64 (its results keep
their bits). ``"float32"`` must give the float64 result to float32's accuracy (a wrong weight, a
skipped step or a lost mean removal is far outside it), each peer's row whatever else shares the
chunk, the same row on every call, the bits of the float32 conversion for half-precision
candidates (``Strategy.widens_received``), and must never write into its inputs.
"""

from __future__ import annotations

import pytest
import torch

import strategies
from fedsim.errors import ScenarioError
from fedsim.scenario import parse
from strategies.base import AggregationContext
from strategies.bristle import Bristle

RULES = [
    {},  # the April defaults: recall, sequential penalty, class-row mean removal (most weights 0)
    {"weight_offset": -1.0},  # every candidate weighs in
    {"weight_offset": -1.0, "mean_removal": "feature", "metric": "f1", "sequential_penalty": 0.0},
    {"weight_offset": -1.0, "mean_removal": "none", "classes": "all"},
]


def _case(seed: int, bias: bool, g: int = 6, k: int = 5, scale: float = 1.0):
    """Random heads; candidates near ``own`` in float16, as the messages; validation sets whose
    samples point at their class (so the argmax is never a near tie between float32 and float64)."""
    gen = torch.Generator().manual_seed(seed)
    c, d, m = 10, 48, 4
    p = c * d + (c if bias else 0)
    own = torch.randn(g, p, generator=gen) * scale
    cand = ((own[:, None, :] + 0.3 * scale * torch.randn(g, k, p, generator=gen)) * 1.0).half()
    val_y = torch.randint(0, c, (g, m), generator=gen)
    val_x = torch.rand(g, m, d, generator=gen) + 3 * torch.nn.functional.one_hot(val_y, d).float()
    mask = torch.rand(g, m, generator=gen) > 0.2
    familiar = torch.rand(g, c, generator=gen) > 0.4
    counts = torch.randint(0, 4, (g, k), generator=gen)
    counts[0] = 0  # heard nobody it shares a class with: no integration, no mean removal
    return own, cand, (val_x, val_y, familiar, (c, d), bias, mask, counts)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("params", RULES)
@pytest.mark.parametrize("bias", [True, False])
def test_float32_gives_the_float64_result_to_float32_accuracy(params, bias):
    r64, r32 = Bristle(**params), Bristle(**params, precision="float32")
    moved = 0
    for seed in range(4):
        for scale in (1.0, 1e-3):
            own, cand, rest = _case(seed, bias, scale=scale)
            own64 = own.double()  # float64 heads: the float64 result before any rounding to float32
            want = r64.integrate(own64, cand, *rest)
            for o in (own, own64):
                got = r32.integrate(o, cand, *rest)
                assert got.dtype == o.dtype
                torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * scale)
            moved += int((want[1:] - own64[1:]).abs().amax() > 1e-2 * scale)
    assert moved > 0  # the integration really moved rows (a rule that returned own would pass above)


@pytest.mark.parametrize("bias", [True, False])
def test_float32_rows_are_batch_independent_and_repeatable(bias):
    rule = Bristle(weight_offset=-1.0, precision="float32")
    own, cand, (vx, vy, fam, shape, b, mask, counts) = _case(1, bias, g=9)
    out = rule.integrate(own, cand, vx, vy, fam, shape, b, mask, counts)
    assert torch.equal(_bits(out), _bits(rule.integrate(own, cand, vx, vy, fam, shape, b, mask, counts)))
    for i in range(9):  # alone, and in a chunk of other peers (reversed, shifted)
        one = slice(i, i + 1)
        alone = rule.integrate(own[one], cand[one], vx[one], vy[one], fam[one], shape, b, mask[one], counts[one])
        assert torch.equal(_bits(alone[0]), _bits(out[i])), i
    perm = torch.tensor([8, 3, 0, 5, 1])
    part = rule.integrate(own[perm], cand[perm], vx[perm], vy[perm], fam[perm], shape, b, mask[perm], counts[perm])
    assert torch.equal(_bits(part), _bits(out[perm]))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_float32_half_candidates_give_the_bits_of_their_conversion_and_nothing_is_written(bias, half):
    rule = Bristle(weight_offset=-1.0, precision="float32")
    own, cand, rest = _case(2, bias)
    cand = cand.to(half)
    c32 = cand.float()
    keep_own, keep_c32, keep_cand = own.clone(), c32.clone(), cand.clone()
    got = rule.integrate(own, cand, *rest)
    assert torch.equal(_bits(got), _bits(rule.integrate(own, c32, *rest)))  # float32 rows: read without a copy
    own64 = own.double()  # float64 heads: keeps_dtype hands half rows; float32/float64 conversions, same bits
    got64 = rule.integrate(own64, cand, *rest)
    assert torch.equal(_bits(got64), _bits(rule.integrate(own64, c32, *rest)))
    assert torch.equal(_bits(got64), _bits(rule.integrate(own64, cand.double(), *rest)))
    assert torch.equal(own, keep_own) and torch.equal(c32, keep_c32) and torch.equal(cand, keep_cand)


def test_aggregate_batch_in_float32_takes_half_rows_and_keeps_their_bits():
    own, cand, (vx, vy, fam, shape, bias, mask, counts) = _case(3, True)
    ctx = AggregationContext(layer_shape=shape, bias=bias, val_x=vx, val_y=vy, val_mask=mask, local_classes=fam)
    rule = Bristle(classes="all", weight_offset=-1.0, precision="float32")
    got = strategies.aggregate_batch(rule, own, cand, ctx)
    assert torch.equal(_bits(got), _bits(strategies.aggregate_batch(rule, own, cand.float(), ctx)))
    assert not torch.equal(got[1:], own[1:])


def test_a_bad_precision_is_one_line(small_scenario):
    with pytest.raises(ValueError, match=r"^precision: must be one of 'float64', 'float32', got 'float16'$"):
        Bristle(precision="float16")
    d = small_scenario(**{"strategy.name": "bristle", "strategy.params": {"precision": "double"}})
    with pytest.raises(ScenarioError) as e:
        parse(d)
    assert "\n" not in str(e.value) and "precision" in str(e.value)
    d = small_scenario(**{"strategy.name": "bristle", "strategy.params": {"precision": "float32"}})
    assert parse(d).strategy.params["precision"] == "float32"


def test_a_float32_overflow_keeps_the_peers_own_row_as_float64_does():
    """A sum past float32's range is inf there: it became NaN-free float32's largest finite value
    through ``to_like``'s clamp and was used (the docstring said the own row is kept). Now the own
    row is kept in float32 as in float64, batched and per peer. Candidates equal to own, a feature
    validation never sees at 3e38 (float64 sums it to 3e38 exactly: the result is own)."""
    c, d = 4, 6
    w = torch.zeros(c, d)
    w[:, :c] = 3 * torch.eye(c)
    w[:, 5] = 3.0e38
    own = w.reshape(1, -1)
    cand = own[:, None].repeat(1, 3, 1)
    vx = torch.zeros(1, c, d)
    vx[0, :, :c] = torch.eye(c)
    ctx = AggregationContext(layer_shape=(c, d), bias=False, val_x=vx, val_y=torch.arange(c)[None],
                             local_classes=torch.ones(1, c, dtype=torch.bool))
    per_peer = AggregationContext(layer_shape=(c, d), bias=False, val_x=vx[0], val_y=torch.arange(c),
                                  local_classes=torch.ones(c, dtype=torch.bool), generator=torch.Generator())
    for precision in ("float64", "float32"):
        rule = Bristle(precision=precision, weight_offset=-1.0, classes="all", mean_removal="none")
        assert torch.equal(strategies.aggregate_batch(rule, own, cand, ctx), own), precision
        assert torch.equal(strategies.aggregate(rule, own[0], cand[0], per_peer)[0], own[0]), precision
