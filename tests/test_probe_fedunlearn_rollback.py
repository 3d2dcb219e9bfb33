"""``method: gossip_rollback`` in the federated-unlearning probe (fedsim.probe_fedunlearn with
fedsim.probe_rollback) on the tiny decentralized federation of tests/test_probe_fedunlearn.py, the
window every trained round: the full replay ('all') brings every peer most of the way to the
federation retrained without the leaver; a hop arm changes exactly its own peers, and not as the
full replay does; every R is the edited state continued R rounds from round T, judged against the
retrained federation at T + R; the engine records the window only when this probe rolls back;
what cannot run is skipped with its reason.

Mutants caught (tried by hand, not shipped): the leaver's messages kept (the rollback's leaver set
to another peer); ``replaying=who`` dropped (every arm replays the whole federation); the arm's
state continued from round T - 1; the gold standard read at T + R - 1; the recorded window shifted
one round back; the runner not recording messages for this probe.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedsim.probe_fedunlearn as pf
from attacks import probes as ap
from fedsim.probe_registry import summarize, validate_probe
from fedsim.probe_rollback import NO_MESSAGES, rollback_heads, skip_reason
from fedsim.probes import _context
from fedsim.report_probes import format_probes
from fedsim.runner import Run, message_window
from fedsim.scenario import parse

T, R, N = 10, 2, 8  # 10 rounds: at 4 the first rounds from zero are too curved for the linearised replay
PROBE = {"kind": "federated_unlearning", "method": "gossip_rollback", "arms": [0, 1, "all"],
         "rounds_after": [0, R], "permutations": 99,
         "canaries": {"count": 10, "kind": "ood", "heldout": 100, "calibration": 0}}


def _scenario(tmp: Path, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "fur", "seed": 3, "rounds": T, "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "partition": {"kind": "dirichlet", "alpha": 1.0}, "peers": {"count": N},
        "topology": {"kind": "k_regular", "degree": 2},
        "training": {"lr": 0.5, "momentum": 0.9, "batch_size": 16, "local_steps": 5},
        "engine": {"backend": "local", "num_actors": 2}, "output": {"dir": str(tmp / "runs")},
        "probes": [PROBE],
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("fedunlearn_rollback")
    run = Run(parse(_scenario(tmp)))
    run.create_dir(overwrite=True)
    run.execute()
    return run, json.loads((run.dir / "probes.json").read_text())[0]


def _per_peer(entry: dict[str, Any], arm: str, r: int, split: str = "forget") -> dict[int, float]:
    return {int(j): kl[split] for cell in entry["records"][arm]["rounds"][str(r)].values()
            for j, kl in cell["kl_to_retrained_per_peer"].items()}


@pytest.mark.slow
def test_entry_and_report(done) -> None:
    run, e = done
    assert e["method"] == "gossip_rollback" and e["rollback_rounds"] == T and e["skipped_methods"] == {}
    assert e["arms"] == ["0", "1", "all"] and sorted(run.messages) == list(range(T))
    hops = {int(j): h for j, h in e["hops"].items()}
    assert sorted(e["records"]["1"]["unlearned"]) == sorted(j for j, h in hops.items() if h == 1)
    assert sorted(e["records"]["all"]["unlearned"]) == sorted(hops)
    md = format_probes([e])
    assert "method gossip_rollback" in md and "| all | 0 |" in md and "Canary membership advantage" in md


@pytest.mark.slow
def test_full_replay_closes_most_of_the_gap(done) -> None:
    """'all' at R = 0: every peer moves toward its retrained head on the forget set, the leaver's
    neighbours by > 85% of the control's KL, the federation (summed over peers) by > 75% (the
    linearised replay of every round; what is left is minibatch noise and curvature)."""
    _, e = done
    hops = {int(j): h for j, h in e["hops"].items()}
    ctrl, every = _per_peer(e, "0", 0), _per_peer(e, "all", 0)
    assert min(ctrl.values()) > 1e-4
    closed = {j: 1 - every[j] / ctrl[j] for j in ctrl}
    assert min(closed.values()) > 0.3, closed
    assert min(c for j, c in closed.items() if hops[j] == 1) > 0.85, closed
    assert 1 - sum(every.values()) / sum(ctrl.values()) > 0.75, closed


@pytest.mark.slow
def test_hop_arm_replays_its_peers_only(done) -> None:
    """Arm 1 at R = 0: the peers beyond hop 1 keep their trained heads (the control's KLs, to the
    bit); its hop-1 peers move toward the retrained federation, but not to the full replay's heads
    (the others' recorded messages still carry the leaver's influence into their averages)."""
    _, e = done
    hops = {int(j): h for j, h in e["hops"].items()}
    ctrl, one, every = _per_peer(e, "0", 0), _per_peer(e, "1", 0), _per_peer(e, "all", 0)
    assert any(h > 1 for h in hops.values())
    for j, h in hops.items():
        if h > 1:
            assert one[j] == ctrl[j], j
        else:
            assert one[j] < ctrl[j] and abs(one[j] - every[j]) > 1e-3 * ctrl[j], (j, one[j], every[j], ctrl[j])


@pytest.mark.slow
def test_every_r_is_the_edited_state_continued_from_round_t(done) -> None:
    """Arm 'all' at R: the probe's KLs are those of the rolled-back state continued R rounds from
    round T without the leaver, judged against the retrained federation after T + R rounds."""
    run, e = done
    peer, ctx = e["peer"], _context(run, run.prepared, run.final_params, None)
    full, info = rollback_heads(ctx, peer, T)
    assert full is not None and info == {"rounds": T}
    who = e["records"]["all"]["unlearned"]
    state = pf._edited_state(ctx, {j: full[j] for j in who}, None)
    cont = run.continue_without(peer, state, T, R, [0, R])
    gold = run.continue_without(peer, None, 0, T + R, [T, T + R])
    forget = ctx.peer_data([peer])[0]
    for r, g in ((0, T), (R, T + R)):
        got = _per_peer(e, "all", r)
        for j in who:
            kl, _ = ap.kl_and_disagreement(torch.from_numpy(gold[g][j]).double(),
                                           torch.from_numpy(np.asarray(cont[r][j])).double(),
                                           forget, ctx.layer_shape, ctx.bias)
            assert kl == pytest.approx(got[j], rel=1e-12, abs=1e-15), (r, j)


@pytest.mark.slow
def test_the_window_is_recorded_only_when_this_probe_rolls_back(done, tmp_path: Path) -> None:
    run, _ = done
    assert message_window(run.sc, run.prepared, None) == T
    assert message_window(run.sc, run.prepared, [0]) == 0  # the continuations and the gold standard
    newton = parse(_scenario(tmp_path, probes=[{**PROBE, "method": "newton"}]))
    assert message_window(newton, run.prepared, None) == 0
    short = parse(_scenario(tmp_path, probes=[{**PROBE, "rollback_rounds": 2}]))
    assert message_window(short, run.prepared, None) == 2


@pytest.mark.slow
def test_skips_say_why(done) -> None:
    run, _ = done
    ctx = _context(run, run.prepared, run.final_params, None)
    assert skip_reason(ctx, T) is None
    median = ctx.strategy.model_copy(update={"name": "median"})
    byz = ctx.honest.copy()
    byz[0] = False
    cases = {
        "not decentralized": dataclasses.replace(ctx, federated=True),
        "rule 'median'": dataclasses.replace(ctx, strategy=median),
        "Byzantine peers": dataclasses.replace(ctx, honest=byz),
        NO_MESSAGES: dataclasses.replace(ctx, messages={r: m for r, m in ctx.messages.items() if r > 0}),
        "rollback_rounds is 0": ctx,
    }
    for why, c in cases.items():
        assert skip_reason(c, 0 if why.startswith("rollback_rounds") else T).startswith(why), why
    cfg = validate_probe(0, {**PROBE, "rounds_after": [0]}, N)
    c = dataclasses.replace(ctx, messages={})
    e = json.loads(json.dumps(pf.run_federated_unlearning(0, cfg, c)))
    assert e["arms"] == ["0"] and e["skipped_methods"] == {"gossip_rollback": NO_MESSAGES}
    assert e["rollback_rounds"] is None and f"Skipped: gossip_rollback: {NO_MESSAGES}" in format_probes([e])
    assert summarize(e)["skipped_methods"] == {"gossip_rollback": NO_MESSAGES}
