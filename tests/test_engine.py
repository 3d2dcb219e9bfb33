"""End-to-end engine behaviour: determinism, actor layout independence, federated mode,
hostile messages, and resume after a kill."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fedsim.limits import local_ray_cpus
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import parse


def _two_cpus(monkeypatch) -> None:
    """This process may use 2 CPUs (its affinity mask, or ``os.cpu_count`` where there is none)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)


def _run(d, overwrite=True, **kw):
    sc = parse(d)
    r = Run(sc)
    r.create_dir(overwrite=overwrite)
    summary = r.execute(**kw)
    return r, summary


def _metrics(r) -> bytes:
    return (r.dir / "metrics.jsonl").read_bytes()


def test_same_seed_same_metrics_bit_for_bit(small_scenario):
    r1, _ = _run(small_scenario(name="a"))
    r2, _ = _run(small_scenario(name="b"))
    assert _metrics(r1) == _metrics(r2)
    r3, _ = _run(small_scenario(name="c", seed=4))
    assert _metrics(r3) != _metrics(r1)


def test_metrics_records(small_scenario):
    r, s = _run(small_scenario(**{"evaluation.every": 2}))
    recs = [json.loads(x) for x in _metrics(r).splitlines()]
    assert [x["round"] for x in recs] == [0, 1, 2, 3]
    assert "accuracy_mean" not in recs[0] and "accuracy_mean" in recs[1]
    for x in recs[1::2]:
        assert 0 <= x["accuracy_min"] <= x["accuracy_mean"] <= x["accuracy_max"] <= 1
        assert x["evaluated_peers"] == 8
    assert s["final_accuracy_mean"] == recs[-1]["accuracy_mean"]
    for f in ("scenario.yaml", "versions.json", "summary.json", "timings.jsonl"):
        assert (r.dir / f).exists()


def test_layout_independent_local_and_ray(small_scenario, ray_session, monkeypatch):
    from fedsim import limits

    base, _ = _run(small_scenario(name="one", **{"engine.num_actors": 1}))
    three, _ = _run(small_scenario(name="three", **{"engine.num_actors": 3}))
    # the final heads fetched from the actors 2 rows at a time (Simulation.final_params' slices)
    monkeypatch.setattr(limits, "FINAL_SLICE_BYTES", 2 * 4 * (10 * 64 + 10))
    ray3, _ = _run(small_scenario(name="ray3", **{"engine.num_actors": 3, "engine.backend": "ray"}))
    ray1, _ = _run(small_scenario(name="ray1", **{"engine.num_actors": 1, "engine.backend": "ray"}))
    assert _metrics(base) == _metrics(three) == _metrics(ray3) == _metrics(ray1)
    assert (base.final_params == ray3.final_params).all() and (base.final_params == ray1.final_params).all()


def test_learns_on_real_data_with_transferred_backbone(small_scenario):
    d = small_scenario(
        rounds=15,
        **{
            "dataset.name": "mnist10k",
            "backbone.name": "fmnist_cnn",
            "peers.count": 20,
            "topology.degree": 6,
            "training.lr": 1.0,
            "training.momentum": 0.9,
            "training.local_steps": 5,
            "training.batch_size": 32,
            "evaluation.every": 15,
        },
    )
    d["backbone"].pop("cache_dir")
    _, s = _run(d)
    assert s["final_accuracy_mean"] > 0.85


def test_federated_mode(small_scenario):
    r, s = _run(small_scenario(mode="federated", rounds=6, **{"topology.kind": "star"}))
    recs = [json.loads(x) for x in _metrics(r).splitlines()]
    assert recs[-1]["evaluated_peers"] == 1
    assert s["final_accuracy_mean"] > 0.5
    assert recs[-1]["bytes_sent_per_peer"] == 4 * (10 * 64 + 10)  # one output layer to the server


def test_local_ray_has_a_cpu_for_every_actor_and_the_server(small_scenario, monkeypatch):
    _two_cpus(monkeypatch)
    dec = parse(small_scenario(**{"engine.num_actors": 2}))
    fed = parse(small_scenario(mode="federated", **{"topology.kind": "star", "engine.num_actors": 2}))
    assert local_ray_cpus(dec) == 2
    assert local_ray_cpus(fed) == 3  # 2 peer groups + the server: all scheduled, round 0 cannot hang
    assert local_ray_cpus(parse(small_scenario(**{"engine.num_actors": 8}))) == 8
    assert local_ray_cpus(parse(small_scenario(**{"engine.backend": "ray", "engine.address": "auto"}))) is None


def test_in_process_groups_use_the_engines_cpus_but_no_more_than_the_machine(small_scenario, monkeypatch):
    _two_cpus(monkeypatch)

    def threads(**engine):
        sc = parse(small_scenario(**{f"engine.{k}": v for k, v in engine.items()}))
        return {s.threads for s in prepare(sc).setups}

    assert threads(backend="local", num_actors=1) == {1}
    assert threads(backend="local", num_actors=2) == {2}  # one group at a time: it may use both CPUs
    assert threads(backend="local", num_actors=50) == {2}  # never oversubscribed
    # side by side (fedsim.threads.local_workers): a CPU each, 2 groups at a time
    assert threads(backend="local", num_actors=2, local_parallel="auto") == {1}
    assert threads(backend="local", num_actors=50, local_parallel="auto") == {1}
    assert threads(backend="ray", num_actors=2, cpus_per_actor=1) == {1}  # an actor: its own CPUs only


@pytest.mark.parametrize("attack", ["nan", "wrong_shape", "crash"])
@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_hostile_messages_are_dropped_and_counted(small_scenario, attack, mode):
    d = small_scenario(
        mode=mode,
        **{
            "peers.byzantine": 2,
            "peers.attack": {"name": attack},
            "topology.kind": "star" if mode == "federated" else "complete",
        },
    )
    r, s = _run(d)
    recs = [json.loads(x) for x in _metrics(r).splitlines()]
    assert all(x["dropped"] > 0 for x in recs)
    assert s["final_accuracy_mean"] is not None and s["final_accuracy_mean"] > 0.3


def test_existing_run_dir_not_overwritten(small_scenario):
    from fedsim.runner import RunDirExistsError

    _run(small_scenario())
    with pytest.raises(RunDirExistsError, match="--overwrite"):
        _run(small_scenario(), overwrite=False)


def test_kill_and_resume_is_byte_identical(small_scenario, tmp_path):
    full, _ = _run(small_scenario(name="full", rounds=8, **{"checkpoint.every": 3}))
    part_sc = parse(small_scenario(name="part", rounds=8, **{"checkpoint.every": 3}))
    r = Run(part_sc)
    r.create_dir()
    r.execute(stop_after=4)  # "killed" after round 4; last checkpoint after round 2
    assert len(_metrics(r).splitlines()) == 5
    summary = Run(part_sc, r.dir).execute(resume=True)
    assert _metrics(r) == _metrics(full)
    assert Path(r.dir / "summary.json").exists()
    # it continued from the checkpoint (restarting at round 0 would give the same bytes)
    assert summary["resumed_after_round"] == 2
    assert json.loads((r.dir / "summary.json").read_text())["resumed_after_round"] == 2


def test_actor_death_stops_clearly_and_resume_matches(small_scenario, ray_session):
    from fedsim.runner import RunInterruptedError

    d = dict(rounds=7, **{"engine.backend": "ray", "engine.num_actors": 2, "checkpoint.every": 2})
    full, _ = _run(small_scenario(name="ref", **d))
    sc = parse(small_scenario(name="killed", **d))
    r = Run(sc)
    r.create_dir()

    def kill_an_actor(i, rec):
        if i == 4:  # kill one actor's process after round 4 (last checkpoint: after round 3)
            import os
            import signal

            os.kill(ray_session.get(r.groups[0].pid.remote()), signal.SIGKILL)

    with pytest.raises(RunInterruptedError, match="--resume"):
        r.execute(progress=kill_an_actor)
    summary = Run(sc, r.dir).execute(resume=True)
    assert _metrics(r) == _metrics(full)
    assert summary["resumed_after_round"] == 3  # from the checkpoint, not from round 0


def test_sigkill_at_random_round_then_resume_is_byte_identical(small_scenario, tmp_path):
    """The driver process itself is SIGKILLed mid-run (not a simulated stop)."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    import yaml

    d = small_scenario(name="victim", rounds=80, **{"checkpoint.every": 2})
    ref, _ = _run(small_scenario(name="reference", rounds=80, **{"checkpoint.every": 2}))
    path = tmp_path / "victim.yaml"
    path.write_text(yaml.safe_dump(d))
    kill_after = random.Random(20260).randint(3, 40)  # seeded: a failure names a reproducible kill point
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "fedsim.cli", "run", str(path), "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = Path(d["output"]["dir"]) / "victim" / "metrics.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_bytes().splitlines()) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(metrics.read_bytes().splitlines()) < 80
    resumed = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "--resume", str(metrics.parent), "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metrics.read_bytes() == _metrics(ref), f"killed after {kill_after} rounds"
    # it continued from a checkpoint (every 2 rounds: after an odd round) taken before the kill
    after = json.loads((metrics.parent / "summary.json").read_text())["resumed_after_round"]
    assert after is not None and after % 2 == 1, after


@pytest.mark.parametrize(
    "over",
    [
        {"mode": "federated", "topology.kind": "star"},
        {"mode": "federated", "topology.kind": "star", "sampling.count": 5},
        {"topology": {"kind": "watts_strogatz", "degree": 4, "p": 0.5}},  # uneven out-degrees
        {"topology": {"kind": "push_gossip", "fanout": 3}},
    ],
    ids=["federated", "sampled", "watts_strogatz", "push_gossip"],
)
def test_a_crash_runs_bytes_are_the_honest_senders_bytes(small_scenario, over):
    """Crash peers send nothing, so they send 0 bytes (they were counted with the nominal
    count): the run's bytes are the honest senders' messages, counted here from the graph's
    in-neighbour lists; a forger that does send (sign_flip, the control) is counted in full."""
    from fedsim.runfacts import sampled_clients

    crash, _ = _run(small_scenario(name="c", rounds=2, **{"peers.byzantine": 2, "peers.attack": {"name": "crash"}},
                                   **over))
    flip, _ = _run(small_scenario(name="s", rounds=2, **{"peers.byzantine": 2, "peers.attack": {"name": "sign_flip"}},
                                  **over))
    prep, sc = crash.prepared, crash.sc
    honest = ~np.asarray(prep.byzantine, dtype=bool)
    n, bpm = sc.peers.count, prep.bytes_per_message
    for rnd, (c, s) in enumerate(zip(*(map(json.loads, _metrics(r).splitlines()) for r in (crash, flip)), strict=True)):
        if sc.mode == "federated":
            sampled = sampled_clients(sc, rnd)
            sends = honest if sampled is None else honest & sampled
            messages, nominal = int(sends.sum()), n if sampled is None else int(sampled.sum())
        elif sc.topology.kind == "push_gossip":
            messages, nominal = 3 * int(honest.sum()), 3 * n
        else:
            _, senders = prep.topology.in_neighbors(0)
            messages, nominal = int(honest[senders].sum()), len(senders)
        assert c["bytes_sent_total"] == bpm * messages < bpm * nominal, (rnd, c)
        assert c["bytes_sent_per_peer"] == int(bpm * messages / n)
        # the control: every sender counted (a mean in-degree times the peers: within a float's rounding)
        assert abs(s["bytes_sent_total"] - bpm * nominal) <= 1, (rnd, s)
