"""Whole-model training (issue 18): the batched torch.func path against plain PyTorch loops,
FedSGD's gradient exchange against one large-batch SGD step, the model section's validation, and
end-to-end runs (bytes, determinism, attacks on exchanged gradients, federated mode)."""

import copy
import dataclasses
import json
import uuid

import numpy as np
import pytest
import torch
import wholeutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fedsim import rng as crng
from fedsim.data.datasets import load
from fedsim.models.backbones import get_spec, to_input
from fedsim.models.trainable import num_layers, split
from fedsim.overrides import set_dotted
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse
from fedsim.whole import WholeServer


def _scenario(tmp_path, **over):
    d = {
        "name": "w",
        "seed": 5,
        "rounds": 2,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"},
        "peers": {"count": 4},
        "topology": {"kind": "complete"},
        "training": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3, "batch_size": 8, "local_steps": 3},
        "model": {"trainable": "all", "hidden": [16], "init": "scratch"},
        "engine": {"backend": "local", "num_actors": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        set_dotted(d, k, v)
    return parse(d)


def _raw_shard(sc, prep, j):
    """Peer ``j``'s raw training inputs (normalised as the backbone takes them) and labels."""
    ds = load(sc.dataset.name)
    idx = prep.setups[0].train_idx[j]
    return to_input(ds.x_train[idx], get_spec(sc.backbone.name)), torch.from_numpy(ds.y_train[idx])


def _reference(sc, prep, j, rounds, steps):
    """Peer ``j`` trained alone as an ``nn.Module``: the frozen prefix and the trainable part applied
    to raw inputs at every step, ``torch.optim.SGD``, minibatches drawn as the engine draws them.
    Returns the trainable parameters (flat) and each round's last-step loss."""
    prefix, suffix = split(prep.setups[0].model)
    suffix = copy.deepcopy(suffix)
    t = sc.training
    opt = torch.optim.SGD(suffix.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    x, y = _raw_shard(sc, prep, j)
    losses = []
    for r in range(rounds):
        for k in range(steps):
            draw = crng.integers(len(y), sc.seed, "batch", r, k, j, np.arange(t.batch_size))
            xb, yb = x[torch.from_numpy(draw)], y[torch.from_numpy(draw)]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(suffix(prefix(xb)), yb)
            loss.backward()
            opt.step()
        losses.append(float(loss.detach()))
    return torch.cat([p.detach().reshape(-1) for p in suffix.parameters()]), losses


def test_cnn_from_scratch_matches_a_plain_pytorch_loop(tmp_path):
    """The whole fmnist_cnn from a seeded random init on embedded MNIST: the batched path's losses
    and parameters equal one plain PyTorch model's, for the same seed, data and order."""
    sc = _scenario(tmp_path, **{"dataset.name": "mnist10k", "backbone.name": "fmnist_cnn", "model.hidden": [],
                               "peers.count": 2, "training.batch_size": 4, "training.local_steps": 2})
    prep, g = wholeutil.group(sc)
    got = []
    for r in range(2):
        _, losses = g.train(r)  # each peer's, float32
        assert losses.dtype == np.float32 and losses.shape == (2,)
        got.append(float(losses.sum()))
    theta = torch.from_numpy(g.params())
    for j in range(2):
        ref, losses = _reference(sc, prep, j, rounds=2, steps=2)
        torch.testing.assert_close(theta[j], ref, rtol=1e-4, atol=1e-5)
    ref_sum = [a + b for a, b in zip(_reference(sc, prep, 0, 2, 2)[1], _reference(sc, prep, 1, 2, 2)[1], strict=True)]
    np.testing.assert_allclose(got, ref_sum, rtol=1e-5)
    # evaluation: each peer's test accuracy and loss are those of its plain model on the raw test set
    prefix, suffix = split(prep.setups[0].model)
    ds = load(sc.dataset.name)
    x_test, y_test = to_input(ds.x_test, get_spec(sc.backbone.name)), torch.from_numpy(ds.y_test)
    ev = g.evaluate()
    for j in range(2):
        torch.nn.utils.vector_to_parameters(theta[j].clone(), suffix.parameters())
        with torch.no_grad():
            z = suffix(prefix(x_test))
        assert ev["accuracy"][j] == pytest.approx(float((z.argmax(1) == y_test).float().mean()), abs=1e-3)
        assert ev["loss"][j] == pytest.approx(float(nn.functional.cross_entropy(z, y_test)), rel=1e-4)


def test_batched_peers_equal_separate_models_last_k_with_cached_prefix(tmp_path):
    """p peers stacked (the last 3 layers: the pretrained CNN's second conv and a 2-layer head MLP;
    the frozen first conv run once and cached) give each peer the parameters of its own separately trained model."""
    sc = _scenario(tmp_path, **{"dataset.name": "mnist10k", "backbone.name": "fmnist_cnn",
                               "model.trainable": "last_k", "model.k": 3, "model.hidden": [8],
                               "model.init": "pretrained", "peers.count": 3, "training.batch_size": 4,
                               "training.local_steps": 2})
    prep, g = wholeutil.group(sc)
    assert prep.features.x_train.shape[1:] == (32, 14, 14)  # conv1 → relu → pool, cached
    suffix_layers = [m for m in split(prep.setups[0].model)[1] if any(True for _ in m.parameters())]
    assert len(suffix_layers) == 3
    for r in range(2):
        g.train(r)
    theta = torch.from_numpy(g.params())
    for j in range(3):
        torch.testing.assert_close(theta[j], _reference(sc, prep, j, rounds=2, steps=2)[0], rtol=1e-4, atol=1e-5)


def test_adam_matches_torch_optim(tmp_path):
    sc = _scenario(tmp_path, **{"training.optimizer": "adam", "training.lr": 0.01, "training.weight_decay": 0.0})
    prep, g = wholeutil.group(sc)
    for r in range(2):
        g.train(r)
    _, suffix = split(prep.setups[0].model)
    suffix = copy.deepcopy(suffix)
    opt = torch.optim.Adam(suffix.parameters(), lr=0.01)
    x, y = _raw_shard(sc, prep, 1)
    for r in range(2):
        for k in range(3):
            d = torch.from_numpy(crng.integers(len(y), sc.seed, "batch", r, k, 1, np.arange(8)))
            opt.zero_grad()
            nn.functional.cross_entropy(suffix(x[d]), y[d]).backward()
            opt.step()
    ref = torch.cat([p.detach().reshape(-1) for p in suffix.parameters()])
    torch.testing.assert_close(torch.from_numpy(g.params()[1]), ref, rtol=1e-4, atol=1e-6)


def _union_step(sc, prep, g, theta0):
    """θ₀ − η ∇L(θ₀) on the union of the peers' round-0 minibatches (one model, one large batch)."""
    _, suffix = split(prep.setups[0].model)
    suffix = copy.deepcopy(suffix)
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(theta0.clone(), suffix.parameters())  # it aliases the vector
    x, y = g._batch(0, 0)
    opt = torch.optim.SGD(suffix.parameters(), lr=sc.training.lr)
    nn.functional.cross_entropy(suffix(x.reshape(-1, *x.shape[2:])), y.reshape(-1)).backward()
    opt.step()
    return torch.cat([p.detach().reshape(-1) for p in suffix.parameters()])


def test_gradient_exchange_with_fedavg_is_one_large_batch_sgd_step(tmp_path):
    """FedSGD: p honest peers that all hear each other, FedAvg of their gradients, one step =
    one SGD step on the union of their minibatches (mean of means of equal-size batches)."""
    sc = _scenario(tmp_path, **{"model.exchange": "gradients", "training.local_steps": 1,
                               "training.momentum": 0.0, "training.weight_decay": 0.0, "training.lr": 0.5})
    prep, g = wholeutil.group(sc)
    theta0 = torch.from_numpy(g.params()[0]).clone()
    msgs, _ = g.train(0)
    assert not np.allclose(msgs[0], msgs[1])  # different minibatches, different gradients
    g.aggregate(0, msgs)
    want = _union_step(sc, prep, g, theta0)
    for j in range(4):
        torch.testing.assert_close(torch.from_numpy(g.params()[j]), want, rtol=1e-5, atol=1e-6)
    # the federated server (FedAvg of its clients, own vector left out) takes the same step
    fed = {"mode": "federated", "strategy": {"name": "fedavg", "params": {"include_own": False}}}  # as prepare sets
    server = WholeServer(dataclasses.replace(prep.setups[0], **fed))
    torch.testing.assert_close(torch.from_numpy(server.get_global()), theta0)
    server.aggregate(0, msgs)
    torch.testing.assert_close(torch.from_numpy(server.get_global()), want, rtol=1e-5, atol=1e-6)


def test_model_section_validation(tmp_path):
    assert num_layers("fmnist_cnn", [8]) == 4
    with pytest.raises(ScenarioError, match=r"model\.k: 5 is more than the model's 4 layers"):
        _scenario(tmp_path, **{"backbone.name": "fmnist_cnn", "dataset.name": "mnist10k",
                               "model.trainable": "last_k", "model.k": 5, "model.hidden": [8]})
    with pytest.raises(ScenarioError, match=r"model\.k: trainable: last_k needs k"):
        _scenario(tmp_path, **{"model.trainable": "last_k"})
    with pytest.raises(ScenarioError, match=r"model\.k: used only by trainable last_k"):
        _scenario(tmp_path, **{"model.k": 1})
    with pytest.raises(ScenarioError, match=r"training\.local_steps: model\.exchange: gradients takes one step"):
        _scenario(tmp_path, **{"model.exchange": "gradients"})
    with pytest.raises(ScenarioError, match=r"strategy\.name: 'bristle' reads linear output layers"):
        _scenario(tmp_path, **{"strategy.name": "bristle"})
    with pytest.raises(ScenarioError, match=r"model\.hidden: widths must be"):
        _scenario(tmp_path, **{"model.hidden": [0]})
    with pytest.raises(ScenarioError, match=r"model\.layers: unknown key; allowed here: trainable, k, hidden"):
        _scenario(tmp_path, **{"model.layers": 2})
    big = {"backbone.name": "fmnist_cnn", "dataset.name": "mnist10k", "model.hidden": [], "peers.count": 2000,
           "training.batch_size": 50_000}
    with pytest.raises(ScenarioError, match=r"model\.trainable: the run needs about .*training activations alone"):
        _scenario(tmp_path, **big)
    _scenario(tmp_path, **(big | {"model.trainable": "head", "model.hidden": [], "model.init": "pretrained"}))
    with pytest.raises(ScenarioError) as e:
        _scenario(tmp_path, **{"model.trainable": "everything"})
    assert "\n" not in str(e.value)


def _run(sc):
    r = Run(sc)
    r.create_dir(overwrite=True)
    r.execute()
    return r, [json.loads(x) for x in (r.dir / "metrics.jsonl").read_text().splitlines()]


def test_runs_learn_reproducibly_and_count_the_exchanged_bytes(tmp_path):
    sc = _scenario(tmp_path, rounds=6, **{"training.lr": 0.1, "training.weight_decay": 0.0,
                                          "model.hidden": [32], "peers.count": 6})
    r1, m1 = _run(sc)
    r2, m2 = _run(sc.model_copy(update={"name": "again"}))
    assert (r1.dir / "metrics.jsonl").read_bytes() == (r2.dir / "metrics.jsonl").read_bytes()
    p = 64 * 32 + 32 + 32 * 10 + 10
    assert r1.prepared.num_params == p and r1.final_params.shape == (6, p)
    assert m1[0]["bytes_sent_per_peer"] == 5 * 4 * p  # complete graph: 5 receivers, 4 bytes a parameter
    assert m1[-1]["accuracy_mean"] > 0.5 > m1[0]["accuracy_mean"] - 0.2  # learns from scratch


def test_ipm_acts_on_exchanged_gradients_and_median_resists(tmp_path):
    """IPM's forgery −ε·mean(honest gradients) turns FedAvg's step uphill; the median ignores it."""
    over = {"model.exchange": "gradients", "training.local_steps": 1, "training.lr": 0.5, "rounds": 40,
            "training.batch_size": 16, "peers.count": 7, "peers.byzantine": 2, "peers.attack.name": "ipm",
            "peers.attack.params": {"eps": 10.0}, "evaluation.every": 40}
    _, attacked = _run(_scenario(tmp_path, **over))
    _, median = _run(_scenario(tmp_path, name="m", **over, **{"strategy.name": "median"}))
    assert median[-1]["accuracy_mean"] > 0.5 > 0.2 > attacked[-1]["accuracy_mean"]


def test_federated_whole_model_runs(tmp_path):
    sc = _scenario(tmp_path, mode="federated", rounds=3, **{"topology.kind": "star", "training.lr": 0.1})
    r, m = _run(sc)
    assert m[-1]["evaluated_peers"] == 1 and 0 <= m[-1]["accuracy_mean"] <= 1
    assert np.allclose(r.final_params, r.final_params[0])


def test_bristle_data_regime_two_samples_per_class_trains_whole_models(tmp_path):
    """Bristle's authors' regime (partition.per_class: 2 training + 2 validation samples of every
    class per peer) with the whole model: shards smaller than a minibatch are drawn with replacement."""
    sc = _scenario(tmp_path, rounds=15, **{"partition": {"kind": "classes", "k": 10, "per_class": 4,
                                                         "val_fraction": 0.5},
                                           "peers.count": 6, "training.lr": 0.1, "training.weight_decay": 0.0,
                                           "training.batch_size": 16, "model.hidden": [32]})
    prep = prepare(sc)
    assert prep.info["train_samples_per_peer"] == [20] * 6
    assert all(np.bincount(prep.features.y_train[t], minlength=10).tolist() == [2] * 10
               for t in prep.setups[0].train_idx)
    _, m = _run(sc)
    assert m[-1]["accuracy_mean"] > 0.5  # 20 samples per peer, shared by averaging: far above chance


@pytest.mark.parametrize("mode", ["decentralized", "federated"])
def test_kill_and_resume_is_byte_identical_with_adam_and_gradients(tmp_path, mode):
    """A checkpoint holds θ and the optimizer's buffers (peers' and, federated, the server's)."""
    over = {"training.optimizer": "adam", "training.lr": 0.01, "training.local_steps": 1,
            "model.exchange": "gradients", "checkpoint.every": 2, "rounds": 6, "mode": mode}
    if mode == "federated":
        over["topology.kind"] = "star"
    full, _ = _run(_scenario(tmp_path, name="full", **over))
    part_sc = _scenario(tmp_path, name="part", **over)
    r = Run(part_sc)
    r.create_dir()
    r.execute(stop_after=2)  # last checkpoint after round 1
    summary = Run(part_sc, r.dir).execute(resume=True)
    assert summary["resumed_after_round"] == 1
    assert (r.dir / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()


_model_values = st.one_of(st.none(), st.booleans(), st.integers(-3, 6), st.floats(allow_nan=True),
                          st.sampled_from(["head", "last_k", "all", "scratch", "pretrained", "params", "gradients",
                                           "dpsgd", "exchanged", "local"]),
                          st.lists(st.integers(-1, 40), max_size=3))
_model_sections = st.dictionaries(st.sampled_from(["trainable", "k", "hidden", "init", "exchange", "bn", "layers"]),
                                  _model_values, max_size=5)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(_model_sections)
def test_fuzzed_model_sections_accept_or_one_line_error(tmp_path_factory, model):
    d = {"dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"}, "model": model,
         "output": {"dir": str(tmp_path_factory.getbasetemp() / "fuzz-model")}}
    try:
        parse(d)
    except ScenarioError as e:
        assert "\n" not in str(e) and str(e).startswith("scenario: ")


@pytest.mark.slow  # ~30 s on a busy machine
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({
    "model": st.fixed_dictionaries({"trainable": st.sampled_from(["head", "last_k", "all"])}, optional={
        "k": st.integers(1, 4), "hidden": st.lists(st.integers(1, 8), max_size=2),
        "init": st.sampled_from(["pretrained", "scratch"]),
        "exchange": st.sampled_from(["params", "gradients", "dpsgd"]), "bn": st.sampled_from(["exchanged", "local"])}),
    "mode": st.sampled_from(["decentralized", "federated"]),
    "strategy": st.fixed_dictionaries(
        {"name": st.sampled_from(["fedavg", "median", "krum", "trimmed_mean", "bristle"])}),
    "training": st.fixed_dictionaries({"optimizer": st.sampled_from(["sgd", "adam"]), "lr": st.floats(1e-3, 1.0),
                                       "local_steps": st.integers(1, 2), "batch_size": st.integers(1, 8)}),
    "peers": st.fixed_dictionaries({"count": st.integers(2, 6), "byzantine": st.integers(0, 1),
                                    "attack": st.fixed_dictionaries({"name": st.sampled_from(["ipm", "alie"])})}),
}))
def test_fuzzed_small_whole_model_runs(tmp_path_factory, data):
    """What validation accepts with a model section runs to the end with finite JSON metrics, or
    stops with one line."""
    root = tmp_path_factory.getbasetemp() / "fuzz-whole"
    if not data["peers"]["byzantine"]:
        data["peers"]["attack"]["name"] = "none"
    data |= {"rounds": 2, "dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"},
             "topology": {"kind": "complete"} if data["mode"] == "decentralized" else {"kind": "star"},
             "engine": {"backend": "local", "num_actors": 2}, "output": {"dir": str(root)},
             "name": f"r{uuid.uuid4().hex[:12]}"}
    try:
        sc = parse(data)
    except ScenarioError as e:
        assert "\n" not in str(e)
        return
    run = Run(sc)
    run.create_dir()
    run.execute(log=lambda m: None)
    lines = (run.dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "accuracy_mean" in json.loads(lines[-1])


def test_layout_independent_local_and_ray(tmp_path, ray_session):
    """Peers spread over 1 or 3 groups, in-process or on Ray actors: the same metrics, to the byte."""
    over = {"peers.count": 7, "rounds": 3, "topology.kind": "k_regular", "topology.degree": 4,
            "model.exchange": "params", "training.local_steps": 1, "strategy.name": "median"}
    one, _ = _run(_scenario(tmp_path, name="one", **over))
    three, _ = _run(_scenario(tmp_path, name="three", **over, **{"engine.num_actors": 3}))
    ray3, _ = _run(_scenario(tmp_path, name="ray3", **over, **{"engine.num_actors": 3, "engine.backend": "ray"}))
    m = [(r.dir / "metrics.jsonl").read_bytes() for r in (one, three, ray3)]
    assert m[0] == m[1] == m[2]


def test_client_sampling_leaves_unsampled_peers_as_they_were(tmp_path):
    """``train(round, global, sampled)``: sampled peers train exactly as in a full round, the others
    keep their parameters and optimizer buffers; the loss counts the sampled honest peers only."""
    sc = _scenario(tmp_path)
    _, full = wholeutil.group(sc)
    _, part = wholeutil.group(sc)
    full.train(0)
    part.train(0)
    before, m_before = part.params(), part.fopt.m.clone()
    sampled = np.array([True, False, True, False])
    _, loss = part.train(1, None, sampled)
    _, full_loss = full.train(1)  # the losses of the 4 peers / of the 2 sampled, in peer order
    after = part.params()
    np.testing.assert_array_equal(after[~sampled], before[~sampled])
    assert torch.equal(part.fopt.m[torch.from_numpy(~sampled)], m_before[torch.from_numpy(~sampled)])
    np.testing.assert_allclose(after[sampled], full.params()[sampled], rtol=0, atol=0)
    np.testing.assert_array_equal(loss, full_loss[sampled])


def test_frozen_prefix_activations_are_cached_on_disk(tmp_path, monkeypatch):
    """last_k: the prefix runs once; a later run reads its activations from the cache (the prefix is
    not run again); a corrupt cache file is recomputed; other weights (init: scratch) get another key."""
    import fedsim.models.trainable as trainable

    over = {"dataset.name": "mnist10k", "backbone.name": "fmnist_cnn", "model.trainable": "last_k", "model.k": 2,
            "model.hidden": [], "model.init": "pretrained"}
    sc = _scenario(tmp_path, **over)
    first = prepare(sc).features
    files = sorted((tmp_path / "cache").glob("*prefix*.npz"))
    assert len(files) == 1 and first.x_train.shape[1:] == (32, 14, 14)
    calls = []
    real = trainable.frozen_inputs
    monkeypatch.setattr(trainable, "frozen_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = prepare(sc).features
    assert calls == [] and np.array_equal(again.x_train, first.x_train) and again.key == first.key
    files[0].write_bytes(b"not a zip")
    fixed = prepare(sc).features
    assert len(calls) == 2 and np.array_equal(fixed.x_train, first.x_train)
    other = prepare(_scenario(tmp_path, **(over | {"model.init": "scratch"}))).features
    assert other.key != first.key and not np.array_equal(other.x_train, first.x_train)


def test_runs_made_before_the_model_section_still_match(small_scenario) -> None:
    """A checkpoint or sweep folder recorded before `model:` existed is the same run as today's default."""
    from fedsim import rundir
    from fedsim._runs import OMITTED_AT_DEFAULT, flatten
    from fedsim.scenario import ModelCfg, SamplingCfg, parse

    defaults = flatten({"model": ModelCfg().model_dump(mode="json"), "sampling": SamplingCfg().model_dump(mode="json")})
    assert defaults == OMITTED_AT_DEFAULT  # the old behaviour, as the schema spells it today
    dump = parse(small_scenario()).model_dump(mode="json")
    old = {k: v for k, v in dump.items() if k not in ("model", "sampling")}
    assert rundir.scenario_fingerprint(old) == rundir.scenario_fingerprint(dump)
    whole = parse(small_scenario(**{"model.trainable": "all"})).model_dump(mode="json")
    assert rundir.scenario_fingerprint(whole)["model.trainable"] == "all"


def test_gradient_exchange_on_a_sparse_gossip_graph_is_refused(tmp_path):
    """Decentralized FedSGD without parameter averaging diverges on a sparse graph (measured: 27.7%
    vs 92.4% on the complete graph), so it is a validation error naming the fix, not a run."""
    with pytest.raises(ScenarioError, match=r"model\.exchange: gradients in decentralized mode needs topology"):
        _scenario(tmp_path, **{"model.exchange": "gradients", "training.local_steps": 1,
                               "topology": {"kind": "k_regular", "degree": 2}})
    _scenario(tmp_path, **{"model.exchange": "gradients", "training.local_steps": 1, "mode": "federated",
                           "topology": {"kind": "star"}})


def test_loop_and_vmap_batching_give_the_same_parameters_to_float_tolerance(tmp_path):
    """``model.batching: loop`` (torch.func.grad per peer) and ``vmap`` (one vmapped call) train the
    same stacked parameters on the same minibatches. Not bitwise equal in general: vmap's grouped
    convolutions and batched matrix products sum in another order, so the assertion is a tight float
    tolerance (rtol 1e-5, atol 1e-6 on weights of order 0.1, after 2 rounds × 2 SGD steps with momentum)."""
    from fedsim.stacked import resolve_batching

    over = {"dataset.name": "mnist10k", "backbone.name": "fmnist_cnn", "model.hidden": [8], "peers.count": 3,
            "training.batch_size": 4, "training.local_steps": 2}
    groups = {m: wholeutil.group(_scenario(tmp_path, **(over | {"model.batching": m})))[1]
              for m in ("vmap", "loop", "auto")}
    assert {m: g.model.batching for m, g in groups.items()} == {"vmap": "vmap", "loop": "loop", "auto": "loop"}
    losses = {m: [g.train(r)[1] for r in range(2)] for m, g in groups.items()}
    theta = {m: torch.from_numpy(g.params()) for m, g in groups.items()}
    torch.testing.assert_close(theta["loop"], theta["vmap"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(losses["loop"], losses["vmap"], rtol=1e-5)
    assert torch.equal(theta["auto"], theta["loop"])  # auto is loop here: the same computation, to the bit
    # each peer keeps its own parameters and minibatches under the loop (not peer 0's for all)
    assert not torch.allclose(theta["loop"][0], theta["loop"][1])
    # the fixed rule: convolutions on the CPU loop; linear/MLP parts and accelerators vmap
    mlp = split(prepare(_scenario(tmp_path)).setups[0].model)[1]
    cnn = split(groups["vmap"].plan)[1]
    assert [resolve_batching("auto", m, d) for m, d in ((cnn, "cpu"), (mlp, "cpu"), (cnn, "cuda"))] == \
        ["loop", "vmap", "vmap"]
    with pytest.raises(ValueError, match=r"model\.batching: must be one of auto, vmap, loop, got 'grouped'"):
        resolve_batching("grouped", mlp, "cpu")


def test_each_batching_value_reproduces_metrics_to_the_bit_and_bad_values_are_refused(tmp_path):
    for m in ("loop", "vmap"):
        sc = _scenario(tmp_path, rounds=3, **{"model.batching": m, "peers.count": 4})
        r1, _ = _run(sc)
        r2, _ = _run(sc.model_copy(update={"name": f"again-{m}"}))
        assert (r1.dir / "metrics.jsonl").read_bytes() == (r2.dir / "metrics.jsonl").read_bytes()
    for bad, msg in (({"model.batching": "grouped"}, r"model\.batching"),
                     ({"model.batching": "loop", "model.trainable": "head", "model.hidden": [],
                       "model.init": "pretrained"}, r"model\.batching: loop applies to whole-model training only")):
        with pytest.raises(ScenarioError, match=msg) as e:
            _scenario(tmp_path, **bad)
        assert "\n" not in str(e.value)
