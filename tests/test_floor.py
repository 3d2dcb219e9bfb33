"""benchmarks/floor.py (the arithmetic floor of the vs-Flower workload) does the workload's
arithmetic: every variant's SGD steps equal fedsim's closed-form gradient step
(:func:`fedsim.heads.ce_grad`), its GEMMs count the FLOP of the formula, and its minibatch is
the rows a client of the iid split really trains on."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from benchutil import load_benchmark
from torch.utils.flop_counter import FlopCounterMode

from fedsim import heads as fheads
from fedsim.partition import make_partition

floor = load_benchmark("floor")
N, CLS, DIM, B, STEPS, LR = 5, 4, 7, 6, 3, 0.7


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, CLS, DIM, generator=g, dtype=torch.float64)
    b = torch.randn(N, CLS, generator=g, dtype=torch.float64)
    x = torch.randn(STEPS, N, B, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLS, (STEPS, N, B), generator=g)
    return w, b, x, y


def _fedsim_steps(w, b, x, y, steps):
    w, b = w.clone(), b.clone()
    for s in range(steps):
        _, gw, gb = fheads.ce_grad(w, b, x[s % x.shape[0]], y[s % x.shape[0]])
        w -= LR * gw
        b -= LR * gb
    return w, b


@pytest.mark.parametrize("v", floor.VARIANTS, ids=lambda v: v.name)
@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("chunk", [N, 2])
def test_every_variant_takes_fedsims_sgd_steps(v, fresh, chunk):
    w, b, x, y = _problem()
    if not fresh:
        x, y = x[:1], y[:1]
    want_w, want_b = _fedsim_steps(w, b, x, y, STEPS)
    fw, fb = floor.heads(v, w, b)
    floor.train(v, fw, fb, floor.inputs(v, x, y, CLS), STEPS, LR, chunk)
    got_w, got_b = floor.as_fedsim(v, fw, fb)
    assert not torch.equal(got_w, w)  # it trained
    torch.testing.assert_close(got_w, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_b, want_b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("v", floor.VARIANTS, ids=lambda v: v.name)
def test_flop_is_the_formula(v):
    w, b, x, y = (t.float() if t.is_floating_point() else t for t in _problem())
    fw, fb = floor.heads(v, w, b)
    data = floor.inputs(v, x, y, CLS)
    with FlopCounterMode(display=False) as fc:
        floor.train(v, fw, fb, data, STEPS, LR, N)
    assert fc.get_total_flops() == N * floor.flop_per_client_round(DIM, CLS, B, STEPS)
    assert floor.flop_per_client_round() == pytest.approx(3.6864e6)  # issue 19's 5 × 2 GEMMs of 10×576×32


@pytest.mark.parametrize("n", [10, 100, 1000, 4000])
def test_client_batch_is_the_trained_shard(n):
    y = np.arange(floor.SAMPLES) % 10
    part = make_partition("iid", y, n, 0)
    shard = max(len(t) for t in part.train)
    assert floor.client_batch(n) == min(floor.BATCH, shard)
    with pytest.raises(ValueError, match="n <= samples"):
        floor.client_batch(floor.SAMPLES + 1)


@pytest.mark.parametrize("argv, option", [
    (["--sizes", "junk"], "--sizes"), (["--sizes", "0"], "--sizes"), (["--threads", "1,,2"], "--threads"),
    (["--repeats", "2,3"], "--repeats"), (["--samples", "-5"], "--samples"),
])
def test_bad_options_are_a_one_line_error(monkeypatch, capsys, argv, option):
    """floor.py (and round_split.py, which reuses its types) refuses bad counts before timing anything."""
    monkeypatch.setattr(sys, "argv", ["floor.py", *argv])
    with pytest.raises(SystemExit) as e:
        floor.main()
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"floor.py: error: argument {option}: expected ") and repr(argv[1]) in last


@pytest.mark.parametrize("argv, expect", [
    (["--rounds", "1"], "argument --rounds: at least 2 (the first round is left out), got 1"),
    (["--sizes", "10,x"], "argument --sizes: expected comma-separated integers >= 1, got '10,x'"),
])
def test_round_split_refuses_bad_options_in_one_line(monkeypatch, capsys, argv, expect):
    round_split = load_benchmark("round_split")
    monkeypatch.setattr(sys, "argv", ["round_split.py", *argv])
    with pytest.raises(SystemExit) as e:
        round_split.main()
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"round_split.py: error: {expect}"
