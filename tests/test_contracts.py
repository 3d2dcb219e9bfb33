"""Contracts between the engine and the rules/attacks it calls (issue 15, item 8): the stale
attack's ``delay``, the ``n``/``f`` an attack is told, and which aggregation errors are counted
as ``skipped`` rather than raised."""

from __future__ import annotations

import json

import pytest
import torch

from fedsim import gossip, messages, server
from fedsim.runner import Run
from fedsim.scenario import parse


def _run(d, **kw):
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    r.execute(**kw)
    return r


def _record_forgeries(monkeypatch) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Wrap :func:`fedsim.messages.forge_messages` where the engine calls it (the names the peer
    groups' aggregation, fedsim.gossip, and the server bound): every broadcast forging of the run as
    ``(round, params [N, P], messages [N, P], byzantine mask)``."""
    calls = []
    real = messages.forge_messages
    assert gossip.forge_messages is real and server.forge_messages is real  # the callers' own bindings

    def spy(attack, s, round_, params, *a, **kw):
        out = real(attack, s, round_, params, *a, **kw)
        if kw.get("receiver") is None:
            calls.append((round_, params.clone(), out[0].clone(), torch.from_numpy(s.byzantine)))
        return out

    for caller in (gossip, server):
        monkeypatch.setattr(caller, "forge_messages", spy)
    return calls


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
@pytest.mark.parametrize("delay", [1, 3])
def test_stale_sends_the_model_held_delay_rounds_ago(small_scenario, monkeypatch, delay, mode):
    calls = _record_forgeries(monkeypatch)
    d = small_scenario(rounds=6, mode=mode, **{"peers.byzantine": 2,
                                                "peers.attack": {"name": "stale", "params": {"delay": delay}},
                                                "topology.kind": "star" if mode == "federated" else "k_regular"})
    _run(d)
    by_round = {}
    for r, params, msgs, byz in calls:  # every group (and the server) forges the same rows
        by_round.setdefault(r, (params, msgs, byz))
        assert torch.equal(msgs[byz], by_round[r][1][byz])
    assert sorted(by_round) == list(range(6))
    for r, (params, msgs, byz) in by_round.items():
        held = by_round[r - delay][0] if r >= delay else params  # before `delay` rounds: the current model
        assert torch.equal(msgs[byz], held[byz]), f"round {r}"
        assert torch.equal(msgs[~byz], params[~byz])
    # the Byzantine models move: a peer stuck at round 0's model would fail the check above
    assert not torch.equal(by_round[5][0][by_round[5][2]], by_round[0][0][by_round[0][2]])


def test_stale_history_survives_a_resume(small_scenario):
    d = dict(rounds=8, **{"checkpoint.every": 3, "peers.byzantine": 2,
                          "peers.attack": {"name": "stale", "params": {"delay": 3}}})
    full = _run(small_scenario(name="full", **d))
    part_sc = parse(small_scenario(name="part", **d))
    r = Run(part_sc)
    r.create_dir()
    r.execute(stop_after=4)  # last checkpoint after round 2: its history holds rounds 0-2
    Run(part_sc, r.dir).execute(resume=True)
    assert (r.dir / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()
    assert json.loads((r.dir / "summary.json").read_text())["resumed_after_round"] == 2


def test_history_is_kept_only_for_forgers_that_look_back() -> None:
    import attacks

    assert attacks.build("stale", {"delay": 3}).lookback == 3
    assert attacks.build("sign_flip").lookback == 0
    own = torch.arange(6.0).reshape(2, 3)
    assert messages.stale_step(None, own, 0) == (None, None)
    prev, hist = messages.stale_step(None, own, 2)
    assert prev is None and hist.shape == (1, 2, 3)
    prev, hist = messages.stale_step(hist, own + 1, 2)
    assert prev is None and hist.shape == (2, 2, 3)
    prev, hist = messages.stale_step(hist, own + 2, 2)
    assert torch.equal(prev, own) and hist.shape == (2, 2, 3)  # bounded: the oldest dropped
    assert torch.equal(hist[0], own + 1) and torch.equal(hist[1], own + 2)


def _spy_alie_contexts(monkeypatch) -> list:
    """The ``AttackContext`` of every ALIE forging of the run."""
    from attacks.alie import ALIE

    seen = []
    real = ALIE.forge

    def spy(self, honest, own, ctx):
        seen.append(ctx)
        return real(self, honest, own, ctx)

    monkeypatch.setattr(ALIE, "forge", spy)
    return seen


def test_alie_is_told_the_victims_n_and_f_not_the_population(small_scenario, monkeypatch):
    """Baruch et al.'s ``n`` is the number of vectors the aggregator combines and ``f`` the
    Byzantine among them (``s = ⌊n/2 + 1⌋ − f`` honest ones must be won over). A decentralized
    victim aggregates its in-neighbours: 4 of the 8 peers here, f = ⌈2/8 · 4⌉ = 1 (the run's f)."""
    from attacks._math import alie_z

    seen = _spy_alie_contexts(monkeypatch)
    r = _run(small_scenario(rounds=2, **{"peers.byzantine": 2, "peers.attack": {"name": "alie"}}))
    assert json.loads((r.dir / "summary.json").read_text())["f"] == 1
    assert seen and {(c.n, c.f_received, c.f) for c in seen} == {(4, 1, 2)}  # z was from n = 8, f = 2
    assert alie_z(4, 1) != pytest.approx(alie_z(8, 2))  # so z, the attack's size, differs


def test_alie_in_federated_mode_hears_the_sampled_clients(small_scenario, monkeypatch):
    seen = _spy_alie_contexts(monkeypatch)
    d = small_scenario(rounds=2, mode="federated", **{"peers.count": 10, "peers.byzantine": 2,
                                                      "peers.attack": {"name": "alie"}, "topology.kind": "star"})
    _run(d)
    assert {(c.n, c.f_received, c.f) for c in seen} == {(10, 2, 2)}  # the server hears every client: unchanged
    seen.clear()
    _run(d | {"name": "s", "sampling": {"count": 5}})
    assert {(c.n, c.f_received, c.f) for c in seen} == {(5, 1, 2)}  # 5 clients a round, ⌈2 · 5/10⌉ = 1


def test_validation_refuses_an_undefined_alie_z(small_scenario):
    """n = 4 received, f = 2: s = ⌊4/2 + 1⌋ − 2 = 1, Φ⁻¹(3/4) is fine; with f = 3, s = 0 and
    z_max is undefined: refused before the run (it used to fail inside round 0, or never)."""
    from fedsim.scenario import ScenarioError

    alie = {"peers.byzantine": 2, "peers.attack": {"name": "alie"}}
    parse(small_scenario(**alie, strategy={"name": "fedavg", "f": 2}))
    bad = small_scenario(**alie, strategy={"name": "fedavg", "f": 3})
    with pytest.raises(ScenarioError, match=r"peers.attack.params: alie: z_max is undefined.*with 4 received"):
        parse(bad)
    z = {"peers.byzantine": 2, "peers.attack": {"name": "alie", "params": {"z": 1.0}}}
    parse(small_scenario(**z, strategy={"name": "clipped_gossip", "f": 3}))  # an explicit z needs no n, f
    with pytest.raises(ScenarioError, match=r"^[^\n]*strategy\.f: used only by rules .*\(this rule is fedavg"):
        parse(small_scenario(**z, strategy={"name": "fedavg", "f": 3}))  # ... and reads no f: nothing does


def _break_median(monkeypatch, error: Exception) -> None:
    """The median rule raises ``error`` on every call (its batched form switched off, so every
    aggregation goes through the per-peer path that used to catch every ValueError)."""
    from strategies.base import Strategy
    from strategies.coordinate import Median

    def boom(self, own, received, ctx):
        raise error

    monkeypatch.setattr(Median, "__call__", boom)
    monkeypatch.setattr(Median, "aggregate_batch", Strategy.aggregate_batch)
    monkeypatch.setattr(Median, "call_is_batched", False)


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_an_unrelated_value_error_in_a_rule_surfaces(small_scenario, monkeypatch, mode):
    """A bug in a rule (or the engine) stops the run; it used to become a silent ``skipped`` count."""
    _break_median(monkeypatch, ValueError("boom: a bug, not a round the rule cannot aggregate"))
    d = small_scenario(rounds=2, mode=mode, strategy={"name": "median"},
                       **{"topology.kind": "star" if mode == "federated" else "k_regular"})
    with pytest.raises(ValueError, match="boom"):
        _run(d)


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_a_round_the_rule_cannot_aggregate_is_skipped_and_counted(small_scenario, monkeypatch, mode):
    import strategies

    _break_median(monkeypatch, strategies.CannotAggregateError("median: too few vectors"))
    d = small_scenario(rounds=2, mode=mode, strategy={"name": "median"},
                       **{"topology.kind": "star" if mode == "federated" else "k_regular"})
    r = _run(d)
    recs = [json.loads(x) for x in (r.dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["skipped"] for x in recs] == ([1, 1] if mode == "federated" else [8, 8])


def test_cannot_aggregate_is_a_value_error_raised_by_the_rules() -> None:
    """Validation still catches it as a ValueError; MDA's over-large search raises it at run time."""
    import strategies
    from strategies import AggregationContext

    assert issubclass(strategies.CannotAggregateError, ValueError)
    rule = strategies.build("mda", {"max_subsets": 10})
    with pytest.raises(strategies.CannotAggregateError, match="max_subsets"):
        rule(torch.zeros(6), torch.randn(8, 6), AggregationContext(layer_shape=(2, 2), f=3))
    with pytest.raises(strategies.CannotAggregateError, match="krum needs"):
        strategies.build("krum").check(4, 2)


def test_alie_z_uses_the_victims_f_not_the_forgers_count() -> None:
    import attacks
    from attacks import AttackContext
    from attacks._math import alie_z

    honest = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]], dtype=torch.float64)
    own = torch.zeros(2, 2, dtype=torch.float64)
    mu, sigma = honest.mean(0), honest.std(0)
    out = attacks.build("alie").forge(honest, own, AttackContext(n=4, f=2, f_received=1))
    assert torch.allclose(out, (mu - alie_z(4, 1) * sigma).expand(2, -1))
    out = attacks.build("alie").forge(honest, own, AttackContext(n=10, f=2))  # f_received unset: f
    assert torch.allclose(out, (mu - alie_z(10, 2) * sigma).expand(2, -1))
