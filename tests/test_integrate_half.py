"""Bristle's batched integrator on the half-precision messages themselves (issue 19: the
100,000-peer round). The engine gathers a chunk's heard rows in the messages' dtype and, for a rule
that ``widens_received`` (Bristle), hands them over without the float32 copy it made before
(``fedsim.routing.Rows.take(float32=False)``, ``strategies.aggregate_batch``); the integrator widens
them to float64 itself, so every result must keep the bits of the float32 path.
"""

from __future__ import annotations

import pytest
import torch

import strategies
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.routing import Rows
from fedsim.scenario import parse
from strategies.base import AggregationContext, keeps_dtype
from strategies.bristle import Bristle


def _case(seed: int, bias: bool, g: int = 6, k: int = 4):
    gen = torch.Generator().manual_seed(seed)
    c, d, m = 10, 48, 3
    p = c * d + (c if bias else 0)
    own = torch.randn(g, p, generator=gen)
    cand = (own[:, None, :] + 0.3 * torch.randn(g, k, p, generator=gen)).half()  # the messages
    val_x = torch.rand(g, m, d, generator=gen)
    val_y = torch.randint(0, c, (g, m), generator=gen)
    mask = torch.rand(g, m, generator=gen) > 0.3
    familiar = torch.rand(g, c, generator=gen) > 0.5
    counts = torch.randint(0, 4, (g, k), generator=gen)
    counts[0] = 0  # heard nobody it shares a class with
    return own, cand, (val_x, val_y, familiar, (c, d), bias, mask, counts)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_candidates_give_the_bits_of_their_float32_conversion(bias, half):
    # weight_offset < 0: every candidate weighs in, so every candidate's value reaches the result
    for rule in (Bristle(), Bristle(weight_offset=-1.0, mean_removal="feature", metric="f1")):
        for seed in range(3):
            own, cand, rest = _case(seed, bias)
            cand = cand.to(half)
            want = rule.integrate(own, cand.float(), *rest)
            assert torch.equal(_bits(rule.integrate(own, cand, *rest)), _bits(want))
            own64 = own.double()  # float64 heads: the float64 arithmetic before any rounding to float32
            want = rule.integrate(own64, cand.float(), *rest)
            assert torch.equal(_bits(rule.integrate(own64, cand, *rest)), _bits(want))


def test_only_rules_that_widen_get_the_rows_unconverted():
    own32, own64 = torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)
    f16, f32, f64 = torch.zeros(2, 1, 3).half(), torch.zeros(2, 1, 3), torch.zeros(2, 1, 3, dtype=torch.float64)
    bristle, fedavg = Bristle(), strategies.build("fedavg")
    assert keeps_dtype(bristle, f16, own32) and keeps_dtype(bristle, f16, own64) and keeps_dtype(bristle, f32, own64)
    assert keeps_dtype(bristle, f32, own32)
    assert not keeps_dtype(bristle, f64, own32)  # a narrowing: converted to own's dtype, as before
    assert not keeps_dtype(fedavg, f16, own32)

    class MyBristle(Bristle):  # a user's subclass (it may override integrate): no inherited promise
        pass

    assert not keeps_dtype(MyBristle(), f16, own32)

    class Declares(Bristle):
        widens_received = True

    assert keeps_dtype(Declares(), f16, own32)


def _spy(monkeypatch) -> list[torch.dtype]:
    """Records the dtype of the candidates every ``Bristle.integrate`` call gets."""
    seen: list[torch.dtype] = []
    integrate = Bristle.integrate

    def spy(self, own, cand, *args, **kw):
        seen.append(cand.dtype)
        return integrate(self, own, cand, *args, **kw)

    monkeypatch.setattr(Bristle, "integrate", spy)
    return seen


def test_aggregate_batch_gives_bristle_half_rows_and_the_same_bits(monkeypatch):
    own, cand, (vx, vy, fam, shape, bias, mask, counts) = _case(2, False)
    ctx = AggregationContext(layer_shape=shape, bias=bias, val_x=vx, val_y=vy, val_mask=mask, local_classes=fam)
    rule = Bristle(classes="all", weight_offset=-1.0)
    seen = _spy(monkeypatch)
    got = strategies.aggregate_batch(rule, own, cand, ctx)
    want = strategies.aggregate_batch(rule, own, cand.float(), ctx)
    assert seen == [torch.float16, torch.float32]
    assert torch.equal(_bits(got), _bits(want))


def test_rows_can_stay_in_the_messages_dtype():
    parts = [torch.randn(3, 4).half(), torch.randn(5, 4).half()]
    idx = torch.tensor([[7, 0], [2, 2]])
    for rows in (Rows(parts), Rows(parts[:1])):  # several groups' arrays, and one
        i = idx % len(rows)
        raw = rows.take(i, float32=False)
        assert raw.dtype == torch.float16 and raw.shape == (2, 2, 4)
        assert torch.equal(raw.float(), rows.take(i))


def _groups(small_scenario):
    d = small_scenario(**{"peers.count": 60, "partition.kind": "iid", "topology.kind": "push_gossip",
                          "topology.fanout": 5, "strategy.name": "bristle", "training.lr": 0.5,
                          "strategy.params": {"weight_offset": -1.0}, "engine.message_dtype": "float16"})
    prep = prepare(parse(d))
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    return [PeerGroup(s, feats) for s in prep.setups]


def test_the_engine_hands_bristle_half_rows_with_the_same_heads(small_scenario, monkeypatch):
    """Two groups, float16 messages, 2 rounds: the heads equal those of the float32-copy path (the
    code before), bit for bit; the rule saw half-precision candidates."""

    def run() -> list[torch.Tensor]:
        groups = _groups(small_scenario)
        for r in range(2):
            sent = [g.train(r)[0] for g in groups]
            for g in groups:
                g.aggregate(r, *sent)
        return [g.w.clone() for g in groups]

    seen = _spy(monkeypatch)
    new = run()
    assert seen and set(seen) == {torch.float16}
    monkeypatch.setattr(Bristle, "widens_received", False)
    seen.clear()
    old = run()
    assert set(seen) == {torch.float32}
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(new, old, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(new, [g.w for g in _groups(small_scenario)], strict=True))
