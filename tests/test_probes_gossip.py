"""The gossip-inversion attack (attacks.probes.gossip_inversion) on small synthetic gossip systems
whose mixing matrices are known: exact where the theory says so, wrong when the attacker's model
of the dynamics is (wrong mixing matrix, rounds shifted by one, local training ignored)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.probes import gossip_inversion as gi


def ring(n: int) -> list[np.ndarray]:
    return [np.array([(i - 1) % n, (i + 1) % n]) for i in range(n)]


def simulate(w: list[torch.Tensor], u: list[torch.Tensor]) -> list[torch.Tensor]:
    """Θ^t = X^t + U^t, X^{t+1} = W_t Θ^t, X^0 = 0: every round's messages [n, P]."""
    x = torch.zeros_like(u[0])
    out = []
    for t, ut in enumerate(u):
        theta = x + ut
        out.append(theta)
        x = w[t] @ theta
    return out


def attack(w, thetas, attacker, nbrs, target, rounds, updates, rcond=1e-10):
    rows = gi.propagation(w, rounds, updates)
    obs = [sorted({attacker, *map(int, nbrs)}) for _ in range(rounds)]
    msgs = [thetas[t][obs[t]] for t in range(rounds)]
    return gi.reconstruct(rows, obs, msgs, rows[rounds - 1][target], rcond=rcond)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one torch thread, as fedsim.probe_runs runs probes (extra threads only contend)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


N, P, T = 8, 5, 12  # a ring of 8: peer 4 is 4 hops from the attacker 0


@pytest.fixture
def constant_system():
    g = torch.Generator().manual_seed(0)
    u0 = torch.randn(N, P, generator=g, dtype=torch.float64)
    w = [gi.fedavg_mixing(ring(N))] * T
    return w, simulate(w, [u0] * T)


def test_fedavg_mixing_is_the_engine_rule():
    w = gi.fedavg_mixing(ring(5))
    assert torch.allclose(w.sum(1), torch.ones(5, dtype=torch.float64))
    assert w[0, 0] == w[0, 1] == w[0, 4] == pytest.approx(1 / 3) and w[0, 2] == 0
    assert gi.fedavg_mixing(ring(5), include_own=False)[0, 0] == 0


@pytest.mark.parametrize("target", [2, 3, 4])
def test_constant_updates_recovered_exactly(constant_system, target):
    """Constant inputs (El Mrini et al.'s gossip setting): the system is overdetermined after a few
    rounds and a peer 2-4 hops away is recovered to 1e-6."""
    w, thetas = constant_system
    rec = attack(w, thetas, 0, ring(N)[0], target, T, "constant")
    assert rec.identifiable < 1e-8
    assert torch.allclose(rec.estimate, thetas[T - 1][target], atol=1e-6)


def test_per_round_updates_observed_everywhere_are_exact():
    """Every message observed (the attacker hears everyone): per-round updates are pinned down."""
    g = torch.Generator().manual_seed(1)
    u = [torch.randn(N, P, generator=g, dtype=torch.float64) for _ in range(T)]
    w = [gi.fedavg_mixing(ring(N))] * T
    thetas = simulate(w, u)
    rec = attack(w, thetas, 0, range(N), 4, T, "per_round")
    assert rec.identifiable < 1e-8
    assert torch.allclose(rec.estimate, thetas[T - 1][4], atol=1e-6)


def test_per_round_non_neighbour_is_not_identifiable():
    """With fresh updates every round a non-neighbour's last update never reaches the attacker in
    time: the system says so (identifiable > 0) instead of claiming exactness."""
    w = [gi.fedavg_mixing(ring(N))] * T
    rows = gi.propagation(w, T, "per_round")
    obs = [[0, 1, N - 1]] * T
    rec = gi.reconstruct(rows, obs, [torch.zeros(3, P, dtype=torch.float64)] * T, rows[T - 1][4])
    assert rec.identifiable > 0.1


def test_time_varying_mixing_exact_and_off_by_one_caught():
    """A different graph every round: the right alignment (W_t after round t) is exact, using
    W_{t+1} instead (an off-by-one in the rounds) is not."""
    g = torch.Generator().manual_seed(2)
    u0 = torch.randn(N, P, generator=g, dtype=torch.float64)
    rng = np.random.default_rng(0)
    w = []
    for _ in range(T + 1):
        perm = rng.permutation(N)
        w.append(gi.fedavg_mixing([np.array([perm[(np.flatnonzero(perm == i)[0] + 1) % N],
                                            perm[(np.flatnonzero(perm == i)[0] - 1) % N]]) for i in range(N)]))
    thetas = simulate(w[:T], [u0] * T)
    obs = ring(N)[0]
    good = attack(w[:T], thetas, 0, obs, 4, T, "constant")
    assert torch.allclose(good.estimate, thetas[T - 1][4], atol=1e-6)
    shifted = attack(w[1:], thetas, 0, obs, 4, T, "constant")
    assert (shifted.estimate - thetas[T - 1][4]).norm() > 1e-2 * thetas[T - 1][4].norm()


def test_wrong_mixing_matrix_is_caught(constant_system):
    """The attacker assumes the own model is left out of the average: the reconstruction is off."""
    w, thetas = constant_system
    wrong = [gi.fedavg_mixing(ring(N), include_own=False)] * T
    rec = attack(wrong, thetas, 0, ring(N)[0], 4, T, "constant")
    assert (rec.estimate - thetas[T - 1][4]).norm() > 1e-2 * thetas[T - 1][4].norm()


def test_ignoring_local_training_is_caught(constant_system):
    """Pure gossip of initial values (updates only in round 0) is the wrong model for D-SGD."""
    w, thetas = constant_system
    rows = gi.propagation(w, T, "per_round")
    obs = [sorted({0, *map(int, ring(N)[0])})] * T
    n = N
    no_training = [r[:, :n] for r in rows]  # only round 0's block: "local updates are zero after round 0"
    rec = gi.reconstruct(no_training, obs, [thetas[t][obs[t]] for t in range(T)], no_training[T - 1][4])
    assert (rec.estimate - thetas[T - 1][4]).norm() > 1e-2 * thetas[T - 1][4].norm()


def test_common_model_is_exact_for_shared_drift_plus_constant():
    """U_j^t = m^t + u_j (a shared drift every round plus constant peer parts) lies in the common
    model's span; the non-neighbour's head comes back closely (least-norm deviations)."""
    g = torch.Generator().manual_seed(3)
    drift = [torch.randn(1, P, generator=g, dtype=torch.float64).expand(N, P) for _ in range(T)]
    w = [gi.fedavg_mixing(ring(N))] * T
    thetas = simulate(w, drift)
    rec = attack(w, thetas, 0, ring(N)[0], 4, T, "common")
    assert torch.allclose(rec.estimate, thetas[T - 1][4], atol=1e-6)


def test_bad_input_one_line_errors():
    w = [gi.fedavg_mixing(ring(4))]
    with pytest.raises(ValueError, match="updates must be one of"):
        gi.propagation(w, 2, "sometimes")
    with pytest.raises(ValueError, match="mixing matrices"):
        gi.propagation(w, 5)
    rows = gi.propagation(w, 2)
    with pytest.raises(ValueError, match="observed peers but"):
        gi.reconstruct(rows, [[0, 1], [0]], [torch.zeros(2, 3)] * 2, rows[1][2])


def test_head_distance():
    shape, x = (3, 4), torch.randn(20, 4, dtype=torch.float64)
    theta = torch.randn(15, dtype=torch.float64)
    d = gi.head_distance(theta, theta, x, shape, True)
    assert d == {"rel_error": 0.0, "agreement": 1.0, "kl": pytest.approx(0.0, abs=1e-12)}
    assert gi.head_distance(theta, -theta, x, shape, True)["rel_error"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- the probe's glue
def synthetic_ctx(n: int = 8, rounds: int = 10, constant: bool = True, seed: int = 0):
    """A ProbeContext whose messages come from a known fedavg gossip on a ring (no engine)."""
    from fedsim.probe_context import _Ctx
    from fedsim.schema_sections import TrainingCfg
    from fedsim.topology import Topology

    c, d = 3, 4
    p_ = c * d + c
    g = torch.Generator().manual_seed(seed)
    topo = Topology("ring", n, seed).build()
    from fedsim.probe_context import in_neighbors

    w = [gi.fedavg_mixing(in_neighbors(topo, t)) for t in range(rounds)]
    u0 = torch.randn(n, p_, generator=g, dtype=torch.float64)
    u = [u0 if constant else torch.randn(n, p_, generator=g, dtype=torch.float64) for _ in range(rounds)]
    thetas = simulate(w, u)
    final = w[rounds - 1] @ thetas[-1]
    x = torch.randn(50, d, generator=g, dtype=torch.float64)
    return _Ctx(out_dir=None, x_train=x, y_train=torch.zeros(50, dtype=torch.long), x_test=x,
                y_test=torch.zeros(50, dtype=torch.long), train_idx=[np.arange(5)] * n,
                honest=np.ones(n, dtype=bool), final_params=final, layer_shape=(c, d), bias=True, seed=seed,
                federated=False, topology=topo, rounds=rounds, training=TrainingCfg(),
                messages={t: thetas[t].float().numpy() for t in range(rounds)})


def probe_cfg(**kw):
    from fedsim.probe_registry import validate_probe

    return validate_probe(0, {"kind": "gossip_cloning", **kw}, 8)


def test_probe_exact_on_constant_gossip_and_beats_every_control():
    from fedsim.probe_gossip import run_gossip_cloning

    entry = run_gossip_cloning(0, probe_cfg(updates="constant", rounds_observed=[6]), synthetic_ctx())
    cell = entry["records"]["10"]["all"]
    assert cell["pairs"] == 8 * 5  # on a ring of 8 every peer has 5 peers 2+ hops away
    assert cell["reconstruction"]["rel_error"] < 1e-5  # float32 messages
    assert cell["identifiable"]["exact_share"] == 1.0
    for c in ("own_head", "observed_mean", "other_peer"):
        e = cell["effect"][c]["rel_error"]
        assert e["mean"] > 0 and e["ci95"][0] > 0
    assert set(entry["records"]["10"]) == {"2", "3", "4", "all"}
    assert entry["final_head"]["all"]["reconstruction"]["rel_error"] < 1e-5
    from fedsim.probe_registry import summarize
    from fedsim.report_probes import format_probes

    table = format_probes([entry])
    assert "Gossip cloning (constant updates" in table and "| 10 | all | 40 |" in table
    assert summarize(entry)["pairs"] == 40


def test_probe_reports_model_mismatch_instead_of_exactness():
    """Fresh random updates every round: the constant model is wrong, per_round is not identifiable."""
    from fedsim.probe_gossip import run_gossip_cloning

    ctx = synthetic_ctx(constant=False)
    const = run_gossip_cloning(0, probe_cfg(updates="constant", rounds_observed=[5]), ctx)
    assert const["records"]["10"]["all"]["reconstruction"]["rel_error"] > 0.1
    per = run_gossip_cloning(0, probe_cfg(updates="per_round", rounds_observed=[5]), ctx)
    assert per["records"]["10"]["all"]["identifiable"]["exact_share"] == 0.0


def test_probe_one_line_errors():
    from fedsim.probe_gossip import run_gossip_cloning

    ctx = synthetic_ctx()
    with pytest.raises(ValueError, match="probes.0.rounds_observed: at most the run's 10 rounds"):
        run_gossip_cloning(0, probe_cfg(rounds_observed=[11]), ctx)
    ctx.messages.pop(3)
    with pytest.raises(ValueError, match="needs every round's messages"):
        run_gossip_cloning(0, probe_cfg(rounds_observed=[5]), ctx)
    with pytest.raises(ValueError, match="probes.0.min_hops: no honest peer is 5"):
        run_gossip_cloning(0, probe_cfg(min_hops=5, rounds_observed=[5]), synthetic_ctx())
    with pytest.raises(ValueError, match="probes.0.updates"):
        probe_cfg(updates="sometimes")
    ctx = synthetic_ctx()
    ctx.federated = True
    with pytest.raises(ValueError, match="needs a decentralized run"):
        run_gossip_cloning(0, probe_cfg(rounds_observed=[5]), ctx)


# ----------------------------------------------------------------------------- against the engine
@pytest.mark.slow
def test_engine_messages_follow_the_attackers_model(tmp_path, small_scenario):
    """A real run keeps every round's messages (Run.messages) only for this probe, and the engine's
    fedavg is the attacker's mixing: final heads = W_{T-1} Θ^{T-1} (a wrong W does not fit)."""
    from fedsim.probe_context import in_neighbors
    from fedsim.runner import Run
    from fedsim.scenario import parse

    raw = small_scenario(**{"topology.kind": "ring", "probes": [{"kind": "gossip_cloning", "rounds_observed": [2]}]})
    run = Run(parse(raw), tmp_path / "run")
    run.create_dir()
    run.execute()
    assert sorted(run.messages) == [0, 1, 2, 3]
    theta = torch.from_numpy(run.messages[3]).double()
    w = gi.fedavg_mixing(in_neighbors(run.prepared.topology, 3))
    final = torch.from_numpy(run.final_params).double()
    assert torch.allclose(w @ theta, final, atol=1e-5)
    wrong = gi.fedavg_mixing(in_neighbors(run.prepared.topology, 3), include_own=False)
    assert not torch.allclose(wrong @ theta, final, atol=1e-3)
    import json

    entry = json.loads((tmp_path / "run" / "probes.json").read_text())[0]
    assert entry["kind"] == "gossip_cloning" and entry["rounds_observed"] == [2, 4]
    bare = Run(parse(small_scenario(rounds=2)), tmp_path / "bare")
    bare.create_dir()
    bare.execute()
    assert bare.messages == {}


def test_batched_distances_match_the_single_ones():
    g = torch.Generator().manual_seed(4)
    shape, x = (3, 4), torch.randn(30, 4, generator=g, dtype=torch.float64)
    ref = torch.randn(5, 15, generator=g, dtype=torch.float64)
    est = torch.randn(5, 15, generator=g, dtype=torch.float64)
    batched = gi.head_distances(gi.HeadSet.of(ref, x, shape, True), gi.HeadSet.of(est, x, shape, True))
    for q in range(5):
        one = gi.head_distance(ref[q], est[q], x, shape, True)
        for m in one:
            assert float(batched[m][q]) == pytest.approx(one[m], abs=1e-12)
    mean = gi.head_distances(gi.HeadSet.of(ref, x, shape, True), gi.HeadSet.of(est[:1], x, shape, True))
    assert float(mean["kl"][2]) == pytest.approx(gi.head_distance(ref[2], est[0], x, shape, True)["kl"], abs=1e-12)


def test_drifting_model_contains_the_constant_case(constant_system):
    """drifting (constant + least-norm deviations) contains the constant case: exact there up to the
    scale that leaves the constant part (almost) unpenalised (error ~ 1/common_scale²)."""
    w, thetas = constant_system
    truth = thetas[T - 1][4]
    rec = attack(w, thetas, 0, ring(N)[0], 4, T, "drifting")
    assert (rec.estimate - truth).norm() < 1e-4 * truth.norm()
    rows = gi.propagation(w, T, "drifting", common_scale=1e6)
    obs = [[0, 1, N - 1]] * T
    exact = gi.reconstruct(rows, obs, [thetas[t][obs[t]] for t in range(T)], rows[T - 1][4])
    assert torch.allclose(exact.estimate, truth, atol=1e-6)


# ----------------------------------------------------------------------------- colluders through the probe
def probe(ctx, **kw):
    from fedsim.probe_gossip import run_gossip_cloning
    from fedsim.probe_registry import validate_probe

    return run_gossip_cloning(0, validate_probe(0, {"kind": "gossip_cloning", **kw}, ctx.n), ctx)


def test_probe_coalition_pairs_controls_and_exactness():
    ctx = synthetic_ctx()  # ring of 8, constant updates, 10 rounds
    for est in ("ls", "gls"):
        entry = probe(ctx, updates="constant", colluders=2, placement="first", estimator=est, rounds_observed=[10])
        assert entry["coalitions"] == [[0, 1]] and entry["estimator"] == est
        cell = entry["records"]["10"]["all"]
        assert cell["pairs"] == 4  # 3, 4, 5, 6: not heard by 0 (hears 1, 7) nor by 1 (hears 0, 2)
        assert cell["reconstruction"]["rel_error"] < 1e-5 and cell["identifiable"]["exact_share"] == 1.0
        assert entry["final_head"]["all"]["reconstruction"]["rel_error"] < 1e-5
        assert {p["target"] for p in entry["pairs"]} == {3, 4, 5, 6}
        assert all(p["colluders"] == [0, 1] and p["attacker"] == 0 for p in entry["pairs"])
    heads = torch.from_numpy(ctx.messages[9]).double()

    def rel(est: torch.Tensor) -> float:  # mean over the 3+ hop targets 4 (3 hops from 1) and 5 (3 from 0)
        return float(np.mean([float((est - heads[k]).norm() / heads[k].norm()) for k in (4, 5)]))

    ctl = probe(ctx, updates="constant", colluders=2, placement="first", rounds_observed=[10],
                min_hops=3)["records"]["10"]["all"]["controls"]
    assert ctl["own_head"]["rel_error"] == pytest.approx(rel(heads[[0, 1]].mean(0)), rel=1e-6)  # the colluders' mean
    assert ctl["observed_mean"]["rel_error"] == pytest.approx(rel(heads[[2, 7]].mean(0)), rel=1e-6)  # heard by them


def test_probe_random_placement_is_seeded():
    a = probe(synthetic_ctx(), colluders=3, placements=5, rounds_observed=[4], min_hops=1)
    b = probe(synthetic_ctx(), colluders=3, placements=5, rounds_observed=[4], min_hops=1)
    assert a["coalitions"] == b["coalitions"] and len(a["coalitions"]) == 5
    assert all(len(set(c)) == 3 and c == sorted(c) for c in a["coalitions"])
    assert len({tuple(c) for c in a["coalitions"]}) > 1


def test_probe_colluder_errors():
    ctx = synthetic_ctx()
    with pytest.raises(ValueError, match="probes.0.attackers: lists single attackers"):
        probe(ctx, colluders=2, attackers=[0, 1], rounds_observed=[4])
    with pytest.raises(ValueError, match="probes.0.colluders: at most 7 of the run's 8 peers"):
        probe(ctx, colluders=8, rounds_observed=[4])
    with pytest.raises(ValueError, match="probes.0.min_hops: no honest peer is 2\\+ hops from every colluder"):
        probe(ctx, colluders=6, placement="first", rounds_observed=[4])
    with pytest.raises(ValueError, match="probes.0.estimator"):
        probe(ctx, estimator="blue")


@pytest.mark.parametrize("entry, message", [
    ({"colluders": 8}, r"probes\.0\.colluders: at most 7 of the run's 8 peers"),
    ({"colluders": 2, "attackers": [0]}, r"probes\.0\.attackers: lists single attackers"),
])
def test_scenario_refuses_impossible_coalitions_before_training(small_scenario, entry, message):
    """What the scenario alone decides (colluders against peers.count, attackers with colluders > 1)
    is a one-line ScenarioError of ``fedsim validate``/``fedsim run`` before any training, not an
    internal error after it."""
    from fedsim.errors import ScenarioError
    from fedsim.scenario import parse

    raw = small_scenario(probes=[{"kind": "gossip_cloning", **entry}])
    with pytest.raises(ScenarioError, match=message):
        parse(raw)
    parse(small_scenario(probes=[{"kind": "gossip_cloning", "colluders": 7, "rounds_observed": [2]}]))


@pytest.mark.parametrize("over, observed, message", [
    ({}, [2, 5], r"probes\.0\.rounds_observed: at most the run's 4 rounds, got 5$"),
    ({"peers.byzantine": 1, "peers.attack.name": "sign_flip"}, [2],
     r"probes\.0\.kind: gossip_cloning runs without Byzantine peers only"),
])
def test_scenario_refuses_what_the_run_cannot_serve_before_training(small_scenario, tmp_path, over, observed, message):
    """A horizon past the run's rounds (`fedsim run scenarios/gossip_cloning.yaml --set rounds=2`)
    or Byzantine peers: the scenario alone decides it, so `fedsim run` refuses it in one line before
    any folder or round (before: the rounds ran, then 'fedsim: internal error: ValueError: ...')."""
    import yaml
    from click.testing import CliRunner

    from fedsim.cli import main
    from fedsim.errors import ScenarioError
    from fedsim.scenario import parse

    raw = small_scenario(**over, probes=[{"kind": "gossip_cloning", "rounds_observed": observed}])
    with pytest.raises(ScenarioError, match=message):
        parse(raw)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(main, ["run", str(path), "-q", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "internal error" not in res.output, res.output
    assert not (tmp_path / "run").exists()
    parse(small_scenario(probes=[{"kind": "gossip_cloning", "rounds_observed": [2, 4]}]))  # up to the run's 4


@pytest.mark.parametrize("estimator", ["ls", "gls"])
@pytest.mark.parametrize("own", ["known", "modelled"])
def test_probe_reconstructs_with_its_estimator_and_own_messages(estimator, own):
    """The probe's pairs are ``coalition_reconstruct`` with the entry's ``estimator`` and
    ``own_messages`` (per-round updates on a ring, where the choices change the estimates: a probe
    that ignored either key failed this test)."""
    from fedsim.probe_context import in_neighbors

    ctx = synthetic_ctx(constant=False)
    entry = probe(ctx, updates="constant", colluders=2, placement="first", estimator=estimator,
                  own_messages=own, rounds_observed=[10])
    nbrs = [in_neighbors(ctx.topology, t) for t in range(10)]
    w = [gi.fedavg_mixing(nb) for nb in nbrs]
    msgs = [torch.from_numpy(ctx.messages[t]).double() for t in range(10)]
    pairs = [p for p in entry["pairs"] if p["colluders"] == [0, 1]]
    assert {p["target"] for p in pairs} == {3, 4, 5, 6}
    for p in pairs:
        k = p["target"]
        rec = gi.coalition_reconstruct(w, msgs, [0, 1], nbrs, torch.eye(8, dtype=torch.float64)[[k]],
                                       updates="constant", estimator=estimator, own=own)
        want = float((rec.estimate[0] - msgs[9][k]).norm() / msgs[9][k].norm())
        assert p["rel_error"] == pytest.approx(want, rel=1e-6)
