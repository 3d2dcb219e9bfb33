"""Bristle's batched integrator is bit-identical to the plain formula it was written from.

``Bristle.integrate`` converts one candidate at a time into a reused float64 buffer and sums,
divides, removes means and saturates in place (issue 19: the 100,000-peer round). The reference
below is the integrator as it was before, every step a fresh tensor; the two must agree bit for
bit (the engine's ``metrics.jsonl`` is byte-identical across versions) on heads with and without
a bias, every mean removal and metric, the sequential penalty, peers that heard nobody, padded
validation sets and values at the edge of float32.
"""

from __future__ import annotations

import pytest
import torch

from strategies._math import PER_CLASS_METRICS, f64, to_like
from strategies.base import flatten, unflatten
from strategies.bristle import Bristle


def reference_integrate(rule, own, cand, val_x, val_y, familiar, layer_shape, bias, val_mask, counts):
    """The integrator before issue 19's in-place rewrite (strategies/bristle.py at a7fe704)."""
    g, k = cand.shape[:2]
    w_own, b_own = unflatten(f64(own), layer_shape, bias)
    w_c, b_c = unflatten(f64(cand), layer_shape, bias)
    xt = f64(val_x).transpose(1, 2)
    heads = [(w_own, b_own)] + [(w_c[:, j], None if b_c is None else b_c[:, j]) for j in range(k)]
    logits = torch.stack(
        [torch.bmm(w, xt) if b is None else torch.baddbmm(b[:, :, None], w, xt) for w, b in heads], dim=1
    ).transpose(2, 3)
    met = PER_CLASS_METRICS[rule.metric](logits, val_y.long(), val_mask)
    weights = rule.integration_weights(met[:, 0], met[:, 1:], familiar, counts)
    num_w, num_b, denom = w_own.clone(), None if b_own is None else b_own.clone(), torch.ones_like(met[:, 0])
    for j in range(k):
        num_w += weights[:, j, :, None] * w_c[:, j]
        if num_b is not None:
            num_b += weights[:, j] * b_c[:, j]
        denom += weights[:, j]
    w_new = num_w / denom[..., None]
    b_new = None if num_b is None else num_b / denom
    if rule.mean_removal == "class":
        w_rm, b_rm = w_new - w_new.mean(dim=-1, keepdim=True), b_new
    elif rule.mean_removal == "feature":
        w_rm = w_new - w_new.mean(dim=-2, keepdim=True)
        b_rm = None if b_new is None else b_new - b_new.mean(dim=-1, keepdim=True)
    else:
        w_rm, b_rm = w_new, b_new
    heard = (counts > 0).any(dim=1)
    w_new = torch.where(heard[:, None, None], w_rm, w_new)
    if b_new is not None and b_rm is not None:
        b_new = torch.where(heard[:, None], b_rm, b_new)
    return to_like(flatten(w_new, b_new), own)


def _case(seed: int, bias: bool, scale: float, agree: bool = False):
    """Random heads and validation sets; ``agree``: every head classifies every validation sample right
    (feature ``c`` weighs heavily for class ``c``), so every candidate is certain and weighs in."""
    gen = torch.Generator().manual_seed(seed)
    g, k, c, d, m = 7, 2 + seed % 5, 10, 48, 3
    p = c * d + (c if bias else 0)
    own = torch.randn(g, p, generator=gen) * scale
    cand = (own[:, None, :] + 0.3 * scale * torch.randn(g, k, p, generator=gen)).half().float()  # as messages
    val_x = torch.rand(g, m, d, generator=gen)
    val_y = torch.randint(0, c, (g, m), generator=gen)
    if agree:
        diag = torch.arange(c) * d + torch.arange(c)
        own[:, diag] += 100 * scale
        cand[:, :, diag] += 100 * scale
        val_x += torch.nn.functional.one_hot(val_y, d).float() * 10
    mask = torch.rand(g, m, generator=gen) > 0.3
    familiar = torch.rand(g, c, generator=gen) > 0.5
    counts = torch.randint(0, 4, (g, k), generator=gen)
    counts[0] = 0  # a peer that heard nobody it shares a class with: no integration, no mean removal
    return own, cand, val_x, val_y, familiar, (c, d), bias, mask, counts


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("mean_removal", ["class", "feature", "none"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("metric", ["recall", "f1"])
def test_integrate_is_bit_identical_to_the_plain_formula(mean_removal, bias, metric):
    # the defaults (most weights 0), and every candidate weighing in (weight_offset < 0: the sum's order matters)
    for penalty, offset in ((2.0, 4.0), (0.0, -1.0)):
        rule = Bristle(mean_removal=mean_removal, metric=metric, sequential_penalty=penalty, weight_offset=offset)
        for seed in range(4):
            for scale, agree in ((1.0, False), (1e3, False), (1.0, True)):
                own, cand, *rest = _case(seed, bias, scale, agree)
                got = rule.integrate(own, cand, *rest)
                assert got.dtype == torch.float32
                assert torch.equal(_bits(got), _bits(reference_integrate(rule, own, cand, *rest)))
                # float64 heads: the float64 arithmetic itself, before the rounding to float32 hides a last bit
                own64, cand64 = own.double(), cand.double()
                got, want = rule.integrate(own64, cand64, *rest), reference_integrate(rule, own64, cand64, *rest)
                assert got.dtype == torch.float64
                assert torch.equal(got.view(torch.int64), want.view(torch.int64))


def test_integrate_saturates_as_before_and_leaves_its_inputs_alone():
    rule = Bristle(weight_offset=-1.0)  # every candidate weighs in
    own, cand, *rest = _case(3, True, 1.0)
    big = torch.finfo(torch.float32).max  # class 0's row: one +max, the rest -max; less its mean: ~1.96 max
    own[1, :48], cand[1, :, :48] = -big, -big
    own[1, 0], cand[1, :, 0] = big, big
    before_own, before_cand = own.clone(), cand.clone()
    got = rule.integrate(own, cand, *rest)
    assert torch.equal(_bits(got), _bits(reference_integrate(rule, own, cand, *rest)))
    assert torch.isfinite(got).all()
    assert torch.equal(own, before_own) and torch.equal(cand, before_cand)


def test_integrate_of_float64_heads_does_not_write_into_own():
    rule = Bristle()
    own, cand, *rest = _case(4, True, 1.0)
    own64, cand64 = own.double(), cand.double()
    keep = own64.clone()
    got = rule.integrate(own64, cand64, *rest)
    assert torch.equal(own64, keep)
    assert torch.equal(got, reference_integrate(rule, own64, cand64, *rest))
