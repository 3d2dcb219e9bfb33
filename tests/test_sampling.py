"""Federated client sampling per round (``sampling: {fraction | count}``): validation, the seeded
draw, who trains and sends, bytes, and that sampling everyone is the unsampled run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedsim.runner import Run
from fedsim.scenario import ScenarioError, clients_per_round, parse, resolve_f, sampled_clients


def _fed(small_scenario, **over):
    return small_scenario(mode="federated", **{"topology.kind": "star", "peers.count": 10, **over})


def _run(d, progress=None):
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    summary = r.execute(progress=progress)
    return r, summary


def _records(r) -> list[dict]:
    return [json.loads(x) for x in (r.dir / "metrics.jsonl").read_bytes().splitlines()]


@pytest.mark.parametrize("sampling,message", [
    ({"fraction": 0}, r"sampling.fraction: .*greater than 0"),
    ({"fraction": 1.5}, r"sampling.fraction: .*less than or equal to 1"),
    ({"count": 0}, r"sampling.count: .*greater than or equal to 1"),
    ({"count": 11}, r"sampling.count: 11 clients per round but peers.count is 10"),
    ({"count": 2, "fraction": 0.5}, r"give sampling.fraction or sampling.count, not both"),
    ({"counts": 2}, r"sampling.counts: unknown key \(did you mean 'count'\?\)"),
])
def test_bad_sampling_is_a_one_line_error(small_scenario, sampling, message) -> None:
    with pytest.raises(ScenarioError, match=message) as e:
        parse(_fed(small_scenario, sampling=sampling))
    assert "\n" not in str(e.value)


def test_sampling_is_federated_only(small_scenario) -> None:
    with pytest.raises(ScenarioError, match="sampling: client sampling is for mode: federated"):
        parse(small_scenario(sampling={"fraction": 0.5}))


def test_clients_per_round(small_scenario) -> None:
    def k(**s):
        return clients_per_round(parse(_fed(small_scenario, sampling=s)))

    assert k() == 10 and k(fraction=1.0) == 10 and k(count=3) == 3 and k(fraction=0.3) == 3
    assert k(fraction=0.05) == 1  # at least one client
    sc = parse(small_scenario(mode="federated", **{"topology.kind": "star", "peers.count": 100,
                                                   "partition.kind": "iid", "sampling": {"fraction": 0.29}}))
    assert clients_per_round(sc) == 29  # 0.29 * 100 = 28.999... in floating point


def test_the_draw_is_reproducible_from_the_seed_and_differs_across_rounds(small_scenario) -> None:
    sc = parse(_fed(small_scenario, sampling={"count": 4}))
    masks = [sampled_clients(sc, r) for r in range(12)]
    assert all(m.dtype == bool and m.shape == (10,) and int(m.sum()) == 4 for m in masks)
    assert all(np.array_equal(m, sampled_clients(parse(_fed(small_scenario, sampling={"count": 4})), r))
               for r, m in enumerate(masks))  # a pure function of (seed, round)
    assert len({tuple(np.flatnonzero(m)) for m in masks}) > 6  # not the same clients every round
    other = parse(_fed(small_scenario, seed=4, sampling={"count": 4}))
    assert any(not np.array_equal(m, sampled_clients(other, r)) for r, m in enumerate(masks))
    counts = np.sum(masks, axis=0)
    assert (counts > 0).sum() >= 8  # honest and Byzantine alike: most clients come up in 12 rounds
    assert sampled_clients(parse(_fed(small_scenario, sampling={"fraction": 1.0})), 0) is None
    assert sampled_clients(parse(_fed(small_scenario)), 0) is None


def test_default_f_and_the_rule_check_follow_the_sampled_count(small_scenario) -> None:
    d = _fed(small_scenario, **{"peers.byzantine": 3, "peers.attack": {"name": "gaussian"},
                                "strategy": {"name": "median"}, "sampling": {"count": 5}})
    sc = parse(d)
    assert resolve_f(sc, None)[0] == 2  # ⌈3 · 5 / 10⌉ expected Byzantine among the sampled
    d["strategy"] = {"name": "krum"}  # krum needs k > 2f + 2 = 6 with 5 clients a round
    with pytest.raises(ScenarioError, match=r"krum needs n \(received\) > 2f \+ 2, got 5 <= 6 \(with 5 received"):
        parse(d)


def test_sampling_everyone_is_the_unsampled_run_byte_for_byte(small_scenario) -> None:
    base = dict(rounds=3, **{"peers.byzantine": 2, "peers.attack": {"name": "alie"}})
    r0, _ = _run(_fed(small_scenario, name="all", **base))
    r1, _ = _run(_fed(small_scenario, name="frac1", sampling={"fraction": 1.0}, **base))
    r2, _ = _run(_fed(small_scenario, name="count10", sampling={"count": 10}, **base))
    m0 = (r0.dir / "metrics.jsonl").read_bytes()
    assert m0 == (r1.dir / "metrics.jsonl").read_bytes() == (r2.dir / "metrics.jsonl").read_bytes()
    assert b"clients_sampled" not in m0


def test_only_sampled_clients_train_and_send(small_scenario) -> None:
    from fedsim.backend import LocalBackend

    d = _fed(small_scenario, rounds=5, **{"peers.byzantine": 2, "peers.attack": {"name": "alie"},
                                         "sampling": {"count": 4}, "engine.num_actors": 3})
    heads: list[np.ndarray] = []
    globals_: list[np.ndarray] = []
    holder: dict = {}

    def progress(r, rec) -> None:
        run = holder["run"]
        # in-process: the groups' calls answer pending results (side by side), the server's plain values
        heads.append(np.concatenate(LocalBackend().get([g.params.remote() for g in run.groups])))
        globals_.append(np.array(LocalBackend().get(run.server.get_global.remote())))

    sc = parse(d)
    run = holder["run"] = Run(sc)
    run.create_dir(overwrite=True)
    run.execute(progress=progress)
    recs = _records(run)
    bpm = recs[0]["bytes_sent_total"] // 4
    byz = run.prepared.byzantine
    for r in range(1, 5):
        m = sampled_clients(sc, r)
        moved = np.any(heads[r] != heads[r - 1], axis=1)
        assert not moved[~m].any(), f"round {r}: a client that was not sampled changed its head"
        assert moved[m].all(), f"round {r}: a sampled client did not train"
        rec = recs[r]
        assert rec["clients_sampled"] == 4 and rec["honest_clients_sampled"] == int((m & ~byz).sum())
        assert rec["bytes_sent_total"] == 4 * bpm and rec["bytes_sent_per_peer"] == 4 * bpm // 10
        assert rec["dropped"] == 0
    assert sum(x["bytes_sent_total"] for x in recs) == json.loads((run.dir / "summary.json").read_text())[
        "bytes_sent_total"]
    # the sampled run is reproducible bit for bit, and differs from the unsampled one
    again, _ = _run({**d, "name": "again"})
    assert (again.dir / "metrics.jsonl").read_bytes() == (run.dir / "metrics.jsonl").read_bytes()
    full, _ = _run({**d, "name": "full", "sampling": {}})
    assert _records(full)[-1]["accuracy_mean"] != recs[-1]["accuracy_mean"]


def test_the_server_aggregates_only_the_sampled_clients(small_scenario, monkeypatch) -> None:
    import strategies
    from fedsim import server

    seen: list[int] = []
    real = strategies.aggregate

    def spy(rule, own, received, ctx, fallback=None, **kw):
        seen.append(int(received.shape[0]))
        return real(rule, own, received, ctx, fallback, **kw)

    monkeypatch.setattr(server.strategies, "aggregate", spy)
    _run(_fed(small_scenario, rounds=3, **{"peers.byzantine": 2, "peers.attack": {"name": "alie"},
                                           "sampling": {"fraction": 0.3}}))
    assert seen == [3, 3, 3]


def test_a_resumed_sampled_run_equals_an_uninterrupted_one(small_scenario) -> None:
    d = _fed(small_scenario, rounds=6, **{"sampling": {"count": 3}, "checkpoint.every": 2})
    full, _ = _run({**d, "name": "full"})
    sc = parse({**d, "name": "part"})
    r = Run(sc)
    r.create_dir()
    r.execute(stop_after=3)
    Run(sc, r.dir).execute(resume=True)
    assert (r.dir / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("optimizer,strategy,mode", [
    ("sgd", "fedavg", "federated"), ("adam", "fedavg", "federated"), ("sgd", "bristle", "decentralized"),
])
def test_training_a_sample_equals_training_everyone_on_the_sampled_rows(small_scenario, optimizer, strategy, mode):
    """``PeerGroup.train`` with ``sampled``: the sampled peers take the global model and train exactly
    as in a full round (minibatches are keyed by peer id), buffers included; the others keep
    their heads and buffers. Bristle: the consolidated-weights (CWR) path."""
    from fedsim.peers import PeerGroup
    from fedsim.prepare import prepare

    over = {"training.optimizer": optimizer, "training.lr": 0.05, "strategy.name": strategy, "engine.num_actors": 1}
    if mode == "federated":
        d = _fed(small_scenario, **over)
    else:  # two classes per peer: the consolidation keeps only their rows
        d = small_scenario(**{"peers.count": 10, "partition.kind": "classes", "partition.k": 2, **over})
    prep = prepare(parse(d))
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    sub, full, idle = (PeerGroup(prep.setups[0], feats) for _ in range(3))
    g0 = np.random.default_rng(0).normal(size=prep.num_params).astype(np.float32)
    g1 = np.random.default_rng(1).normal(size=prep.num_params).astype(np.float32)
    for g in (sub, full, idle):
        g.train(0, g0)  # momentum / Adam moments are non-zero from here on
    before = sub.params().copy()
    m_before = sub.opt.m_w.clone()
    mask = np.zeros(10, dtype=bool)
    mask[[1, 4, 5, 8]] = True
    a, loss_a = sub.train(1, g1, mask)
    b, _ = full.train(1, g1)
    np.testing.assert_allclose(a[mask], b[mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a[~mask], before[~mask])
    assert torch_equal(sub.opt.m_w[~mask], m_before[~mask])
    np.testing.assert_allclose(sub.opt.m_w[mask].numpy(), full.opt.m_w[mask].numpy(), rtol=1e-5, atol=1e-6)
    assert sub.opt.t == full.opt.t  # Adam's step count advances every round, trained or not
    honest = ~np.asarray(prep.byzantine, dtype=bool)
    assert loss_a.dtype == np.float32 and len(loss_a) == int((mask & honest).sum()) and (loss_a > 0).all()
    held, _ = idle.train(1, g1, np.zeros(10, dtype=bool))  # none of this group's peers sampled
    np.testing.assert_array_equal(held, before)
    assert idle.opt.t == full.opt.t


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))


def test_checkpoints_written_before_sampling_existed_still_match(small_scenario) -> None:
    from fedsim import rundir

    dump = parse(small_scenario()).model_dump(mode="json")
    old = {k: v for k, v in dump.items() if k != "sampling"}  # a scenario recorded by an older fedsim
    assert rundir.scenario_fingerprint(old) == rundir.scenario_fingerprint(dump)
    sampled = parse(_fed(small_scenario, sampling={"count": 3})).model_dump(mode="json")
    assert rundir.scenario_fingerprint(sampled)["sampling.count"] == 3
