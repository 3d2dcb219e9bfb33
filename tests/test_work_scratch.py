"""The float64 scratch a caller keeps for its rule's copy of the received rows
(``strategies.aggregate(work=)``, the federated server's, one call per round): the rule holds no
state, every call's result is that of a fresh float64 copy, and the server's scratch lasts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import strategies
from fedsim.prepare import prepare
from fedsim.scenario import parse
from fedsim.server import Server

RULES = [("fedavg", {"include_own": False}), ("fedavg", {}), ("median", {"include_own": False}),
         ("trimmed_mean", {"include_own": False, "beta": 0.2})]


def _ctx(p: int) -> strategies.AggregationContext:
    return strategies.AggregationContext(layer_shape=(1, p - 1), bias=True, f=1)


@pytest.mark.parametrize("name,params", RULES)
def test_two_calls_through_one_scratch_give_the_fresh_results(name, params):
    """Different inputs (and fewer rows the second time) through the same scratch: each result is
    the one without a scratch, bit for bit, and a result held from the first call is unchanged."""
    rule = strategies.build(name, params)
    assert rule.float64_input
    g = torch.Generator().manual_seed(0)
    own = torch.randn(7, generator=g)
    work = torch.full((6, 7), 12345.0, dtype=torch.float64)  # stale contents the calls must overwrite
    first, second = torch.randn(6, 7, generator=g) * 1e3, torch.randn(5, 7, generator=g)
    got1, _ = strategies.aggregate(rule, own, first, _ctx(7), work=work)
    held = got1.clone()
    got2, _ = strategies.aggregate(rule, own, second, _ctx(7), work=work)
    assert torch.equal(got1, strategies.aggregate(rule, own, first, _ctx(7))[0])
    assert torch.equal(got2, strategies.aggregate(rule, own, second, _ctx(7))[0])
    assert not torch.equal(got1, got2) and torch.equal(got1, held)
    assert torch.equal(work[:5], second.double())  # the rows went through the caller's scratch
    assert set(vars(rule)) == set(vars(strategies.build(name, params)))  # the rule keeps nothing


def test_the_scratch_keeps_float64_range():
    big = torch.full((4, 7), 3e38)  # float64 work: the float32 sum would overflow
    rule = strategies.build("fedavg", {"include_own": False})
    out, _ = strategies.aggregate(rule, torch.zeros(7), big, _ctx(7), work=torch.empty(4, 7, dtype=torch.float64))
    assert torch.equal(out, torch.full((7,), 3e38))


def test_rules_without_float64_input_and_strided_rows_ignore_the_scratch():
    work = torch.zeros(4, 3, dtype=torch.float64)
    krum = strategies.build("krum", {})
    assert not krum.float64_input
    strategies.aggregate(krum, torch.zeros(3), torch.randn(4, 3), _ctx(3), work=work)
    rows = torch.randn(3, 4).T  # not contiguous
    fedavg = strategies.build("fedavg", {"include_own": False})
    out, _ = strategies.aggregate(fedavg, torch.zeros(3), rows, _ctx(3), work=work)
    assert torch.equal(work, torch.zeros(4, 3, dtype=torch.float64))
    assert torch.equal(out, rows.double().mean(dim=0).float())


def test_a_scratch_that_cannot_hold_the_rows_is_refused_in_one_line():
    rule = strategies.build("fedavg", {"include_own": False})
    with pytest.raises(ValueError, match=r"^work: must be a contiguous float64 \[>= 4, 3\]"):
        strategies.aggregate(rule, torch.zeros(3), torch.ones(4, 3), _ctx(3), work=torch.empty(3, 3))


def test_the_server_keeps_one_scratch_across_rounds(small_scenario):
    """The federated server converts every round's messages into the same float64 scratch, and its
    global model is each round's fresh float64 mean of what its clients sent."""
    sc = parse(small_scenario(mode="federated", **{"strategy.name": "fedavg"}), "t.yaml")
    prep = prepare(sc)
    server = Server(prep.server_setup, *prep.root)
    g = np.random.default_rng(0)
    n, p = sc.peers.count, server.global_params.size
    ptr = None
    for r in range(3):
        sent = g.normal(size=(n, p)).astype(np.float32) * 10 ** r
        server.aggregate(r, sent[: n // 2], sent[n // 2:])
        assert np.array_equal(server.get_global(), sent.astype(np.float64).mean(axis=0).astype(np.float32))
        ptr = ptr or server.work.data_ptr()
        assert server.work.shape == (n, p) and server.work.data_ptr() == ptr
