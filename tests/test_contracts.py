"""Contracts between the engine and the rules/attacks it calls (issue 15, item 8): the stale
attack's ``delay``, the ``n``/``f`` an attack is told, and which aggregation errors are counted
as ``skipped`` rather than raised."""

from __future__ import annotations

import json

import pytest
import torch

from fedsim import peers
from fedsim.runner import Run
from fedsim.scenario import parse


def _run(d, **kw):
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    r.execute(**kw)
    return r


def _record_forgeries(monkeypatch) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Wrap ``fedsim.peers.forge_messages``: every broadcast forging of the run as
    ``(round, params [N, P], messages [N, P], byzantine mask)``."""
    calls = []
    real = peers.forge_messages

    def spy(attack, s, round_, params, *a, **kw):
        out = real(attack, s, round_, params, *a, **kw)
        if kw.get("receiver") is None:
            calls.append((round_, params.clone(), out[0].clone(), torch.from_numpy(s.byzantine)))
        return out

    monkeypatch.setattr(peers, "forge_messages", spy)
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
    assert peers.stale_step(None, own, 0) == (None, None)
    prev, hist = peers.stale_step(None, own, 2)
    assert prev is None and hist.shape == (1, 2, 3)
    prev, hist = peers.stale_step(hist, own + 1, 2)
    assert prev is None and hist.shape == (2, 2, 3)
    prev, hist = peers.stale_step(hist, own + 2, 2)
    assert torch.equal(prev, own) and hist.shape == (2, 2, 3)  # bounded: the oldest dropped
    assert torch.equal(hist[0], own + 1) and torch.equal(hist[1], own + 2)
