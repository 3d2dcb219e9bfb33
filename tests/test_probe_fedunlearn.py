"""The federated-unlearning probe (fedsim.probe_fedunlearn) on a tiny decentralized run: the
control arm is a plain continued run to the bit, an arm labelled 'all' that unlearns nobody is
caught, and unlearning everywhere moves the leaver's neighbours toward the retrained federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fedsim.probe_fedunlearn as pf
from attacks import probes as ap
from fedsim.callbacks import StopAfter
from fedsim.probe_registry import validate_probe
from fedsim.probes import _context
from fedsim.report_probes import format_probes
from fedsim.runner import Run
from fedsim.scenario import parse

T, R = 4, 2
PROBE = {"kind": "federated_unlearning", "arms": [0, 1, "all"], "rounds_after": [0, R], "permutations": 99,
         "canaries": {"count": 10, "kind": "ood", "heldout": 100, "calibration": 0}}


def _scenario(tmp: Path, **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "fu", "seed": 3, "rounds": T, "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "partition": {"kind": "dirichlet", "alpha": 1.0}, "peers": {"count": 8},
        "topology": {"kind": "k_regular", "degree": 2},
        "training": {"lr": 0.5, "momentum": 0.9, "batch_size": 16, "local_steps": 5},
        "engine": {"backend": "local", "num_actors": 2}, "output": {"dir": str(tmp / "runs")},
        "probes": [PROBE],
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp("fedunlearn")
    run = Run(parse(_scenario(tmp)))
    run.create_dir(overwrite=True)
    run.execute()
    return run, json.loads((run.dir / "probes.json").read_text())[0], tmp


def _moves_neighbours(entry: dict[str, Any]) -> None:
    """At R = 0, arm 'all' changed every other peer's head and brought the leaver's neighbours
    (hop 1, where its influence sits) closer to the retrained federation on the forget set."""
    ctrl, every = entry["records"]["0"]["rounds"]["0"], entry["records"]["all"]["rounds"]["0"]
    for g in ctrl:
        for j, kl in ctrl[g]["kl_to_retrained_per_peer"].items():
            assert every[g]["kl_to_retrained_per_peer"][j]["forget"] != kl["forget"], (g, j)
    assert every["1"]["kl_to_retrained"]["forget"] < 0.9 * ctrl["1"]["kl_to_retrained"]["forget"]


@pytest.mark.slow
def test_entry_shape(done) -> None:
    run, e, _ = done
    assert e["kind"] == "federated_unlearning" and e["trained_rounds"] == T and e["rounds_after"] == [0, R]
    assert e["records"]["0"]["unlearned"] == []
    hops = {int(j): h for j, h in e["hops"].items()}
    assert sorted(e["records"]["1"]["unlearned"]) == sorted(j for j, h in hops.items() if h == 1)
    assert sorted(e["records"]["all"]["unlearned"]) == sorted(hops)
    cell = e["records"]["1"]["rounds"][str(R)]["1"]
    assert set(cell["kl_to_retrained"]) == {"forget", "test", "forget_natural", "forget_canaries"}
    assert set(cell["canary_membership"]) >= {"advantage", "null_q95", "p_value"}
    assert cell["kl_minus_control"]["forget"] == pytest.approx(
        cell["kl_to_retrained"]["forget"] - e["records"]["0"]["rounds"][str(R)]["1"]["kl_to_retrained"]["forget"])
    assert "| all | 0 |" in format_probes([e]) and "Federated unlearning" in format_probes([e])
    # arm 1 leaves the peers beyond hop 1 untouched at R = 0
    for g, c in e["records"]["1"]["rounds"]["0"].items():
        if g != "1":
            assert c["kl_to_retrained"] == e["records"]["0"]["rounds"]["0"][g]["kl_to_retrained"]


@pytest.mark.slow
def test_control_is_a_plain_continued_run(done) -> None:
    """The control arm == the run stopped after round T-1 (checkpoint) and resumed with the leaver
    absent (the runner's own resume path), to the bit; and so are the control's KLs."""
    run, e, tmp = done
    peer = e["peer"]
    sc = parse(_scenario(tmp, rounds=T + R))  # the probe's canaries planted, the probe not run
    first = Run(sc, tmp / "plain", run_probes=False)
    first.create_dir(overwrite=True)
    assert first.execute(callbacks=[StopAfter(T - 1, checkpoint=True)]) == {"stopped_after": T - 1}
    second = Run(sc, tmp / "plain", absent=[peer], run_probes=False)
    second.execute(resume=True)
    plain = np.asarray(second.final_params)
    mine = run.continue_without(peer, run.final_state, T, R, [R])[R]
    assert np.array_equal(plain, mine)
    gold = run.continue_without(peer, None, 0, T + R, [T + R])[T + R]
    ctx = _context(run, run.prepared, run.final_params, None)
    splits = {"forget": ctx.peer_data([peer])[0]}
    for g, cell in e["records"]["0"]["rounds"][str(R)].items():
        for j in cell["peers"]:
            kl, _ = ap.kl_and_disagreement(torch.from_numpy(gold[j]).double(), torch.from_numpy(plain[j]).double(),
                                           splits["forget"], ctx.layer_shape, ctx.bias)
            assert kl == cell["kl_to_retrained_per_peer"][str(j)]["forget"], (g, j)


@pytest.mark.slow
def test_every_peer_moves_the_neighbours_toward_retrained(done) -> None:
    _moves_neighbours(done[1])


@pytest.mark.slow
def test_mutant_arm_that_unlearns_nobody_fails(done, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutant: 'all' is labelled but nobody unlearns (the unlearner set comes back empty)."""
    run, _, _ = done
    monkeypatch.setattr(pf, "unlearners", lambda *a, **k: [])
    cfg = validate_probe(0, {**PROBE, "arms": [0, "all"], "rounds_after": [0]}, 8)
    ctx = _context(run, run.prepared, run.final_params, None)
    entry = json.loads(json.dumps(pf.run_federated_unlearning(0, cfg, ctx)))
    with pytest.raises(AssertionError):
        _moves_neighbours(entry)


@pytest.mark.parametrize("bad, msg", [
    ({"arms": [0, -1]}, "probes.0.arms"), ({"arms": []}, "probes.0.arms"), ({"arms": [1, 1]}, "probes.0.arms"),
    ({"rounds_after": [-2]}, "probes.0.rounds_after"), ({"method": "ascent"}, "probes.0.method"),
])
def test_bad_keys(bad: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        validate_probe(0, {"kind": "federated_unlearning", **bad}, 8)


@pytest.mark.slow
def test_federated_mode_unlearns_at_the_server(tmp_path: Path) -> None:
    """Federated: arm 'all' is the server's global model; hop arms are refused with one line."""
    d = _scenario(tmp_path, mode="federated", topology={"kind": "star"},
                  probes=[{**PROBE, "arms": [0, "all"], "rounds_after": [0]}])
    run = Run(parse(d))
    run.create_dir(overwrite=True)
    run.execute()
    e = json.loads((run.dir / "probes.json").read_text())[0]
    assert e["records"]["all"]["unlearned"] == ["server"] and e["records"]["0"]["unlearned"] == []
    ctrl, srv = e["records"]["0"]["rounds"]["0"]["global"], e["records"]["all"]["rounds"]["0"]["global"]
    assert srv["kl_to_retrained"]["forget"] != ctrl["kl_to_retrained"]["forget"]
    cfg = validate_probe(0, {**PROBE, "arms": [0, 1]}, 8)
    with pytest.raises(ValueError, match=r"^probes\.0\.arms: federated mode has no hops"):
        pf.run_federated_unlearning(0, cfg, _context(run, run.prepared, run.final_params, None))


def test_the_continuations_record_their_onemkl_branch_as_a_resume_does(tmp_path: Path) -> None:
    """Each continuation (the gold standard, one per arm) appends its driver's oneMKL branch to
    probes/versions.json (``mkl_branch_continuations``, by the runner's record_branches, as a
    resume's are to the run's versions.json); before, they ran without a word."""
    from fedsim.mkl_branch import current

    probe = {"kind": "federated_unlearning", "arms": [0, 1], "rounds_after": [0, 1], "permutations": 99}
    run = Run(parse(_scenario(tmp_path, rounds=2, probes=[probe])))
    run.create_dir(overwrite=True)
    run.execute()
    recorded = json.loads((run.dir / "versions.json").read_text())
    entry = {} if current() is None else {"mkl_branch": current()}
    continued = json.loads((run.dir / "probes" / "versions.json").read_text())  # the probe's own folder
    assert continued == {"mkl_branch_continuations": [entry] * 3}  # the gold standard, arms 0 and 1
    # the run's own file is the first start's alone (a probe changes no run file outside probes/)
    assert "mkl_branch_continuations" not in recorded and "mkl_branch_resumes" not in recorded
    assert recorded.get("mkl_branch") == current()
