"""Feature shift (``dataset.domains``, issue 18, FedBN's setting): the transforms are deterministic
and distinct; a peer's training, validation and test inputs are its own domain's; each peer is
evaluated on its own domain's test set; with ``bn: local`` the peers' BatchNorm parameters and
statistics stay apart after training while with ``exchanged`` they are equal; where the shift
cannot apply, one line."""

import numpy as np
import pytest
import torch
import wholeutil

from fedsim.data import domains
from fedsim.data.datasets import load
from fedsim.models.trainable import frozen_inputs, split
from fedsim.overrides import set_dotted
from fedsim.runner import prepare
from fedsim.scenario import ScenarioError, parse
from fedsim.stacked import accuracy_and_loss

SHIFT = ["identity", "invert", "rot90"]


def _scenario(tmp_path, **over):
    d = {
        "name": "shift",
        "seed": 3,
        "rounds": 1,
        "dataset": {"name": "mnist10k", "domains": SHIFT},
        "backbone": {"name": "fmnist_bn_cnn", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "iid"},
        "peers": {"count": 5},
        "topology": {"kind": "complete"},
        "training": {"lr": 0.05, "momentum": 0.0, "batch_size": 8, "local_steps": 2},
        "model": {"trainable": "all", "init": "scratch"},
        "engine": {"backend": "local", "num_actors": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for k, v in over.items():
        set_dotted(d, k, v)
    return parse(d)


def test_transforms_are_deterministic_distinct_and_keep_the_image_format():
    x = load("mnist10k").x_train[:40]
    out = {}
    for name in domains.DOMAINS:
        a = domains.transform(name, x, 7, "train")
        assert a.dtype == np.uint8 and a.shape == x.shape
        assert np.array_equal(a, domains.transform(name, x, 7, "train"))  # a pure function of its inputs
        out[name] = a
    names = list(out)
    for i, p in enumerate(names):  # every domain shows the images differently
        for q in names[i + 1 :]:
            assert not np.array_equal(out[p], out[q]), (p, q)
    assert np.array_equal(out["identity"], x)
    assert np.array_equal(out["invert"], 255 - x)
    assert np.array_equal(out["rot90"][:, 0, :], x[:, :, -1])  # counter-clockwise: the last column on top
    assert out["contrast"].min() >= 89 and out["contrast"].max() <= 166  # 0.3 x + 89.25
    # the noise is keyed by the seed and the split, fixed for each
    assert not np.array_equal(out["noise"], domains.transform("noise", x, 8, "train"))
    assert not np.array_equal(out["noise"], domains.transform("noise", x, 7, "test"))
    mid = (x >= 96) & (x <= 160)  # mostly unclipped: the additive noise's σ = 64 shows
    assert 50 < float((out["noise"].astype(float) - x)[mid].std()) < 70
    assert domains.peer_domains(5, SHIFT) == ["identity", "invert", "rot90", "identity", "invert"]


def test_each_peer_trains_validates_and_is_tested_on_its_own_domain(tmp_path):
    """Training, validation and test inputs of every peer are the frozen prefix's inputs of its
    domain's transform of the same samples the unshifted partition gives it; labels unchanged."""
    sc = _scenario(tmp_path)
    prep = prepare(sc)
    plain = prepare(_scenario(tmp_path, **{"dataset.domains": []}))  # the same partition, unshifted
    ds = load("mnist10k")
    prefix = split(prep.setups[0].model)[0]
    f, s, s0 = prep.features, prep.setups[0], plain.setups[0]
    assert s.test_idx is not None and s0.test_idx is None
    assert prep.info["domains"] == domains.peer_domains(5, SHIFT)
    for i, name in enumerate(prep.info["domains"]):
        xtr = frozen_inputs(prefix, domains.transform(name, ds.x_train, sc.seed, "train"), sc.backbone.name)
        xte = frozen_inputs(prefix, domains.transform(name, ds.x_test, sc.seed, "test"), sc.backbone.name)
        for new, old in ((s.train_idx[i], s0.train_idx[i]), (s.val_idx[i], s0.val_idx[i])):
            assert len(new) == len(old) > 0
            np.testing.assert_array_equal(f.x_train[new], xtr[old])
            np.testing.assert_array_equal(f.y_train[new], ds.y_train[old])
        np.testing.assert_array_equal(f.x_test[s.test_idx[i]], xte)
        np.testing.assert_array_equal(f.y_test[s.test_idx[i]], ds.y_test)


def test_evaluation_is_on_each_peers_own_test_rows(tmp_path):
    sc = _scenario(tmp_path, **{"evaluation.per_peer": True})
    prep, g = wholeutil.group(sc)
    g.train(0)
    g.test_rows = [t[:150] for t in g.test_rows]  # fast enough: the first 150 of each peer's test rows
    ev = g.evaluate()
    f, s = prep.features, prep.setups[0]
    for j in range(g.p):
        rows = s.test_idx[j][:150]
        x, y = torch.from_numpy(f.x_test[rows]), torch.from_numpy(f.y_test[rows])
        a, lo = accuracy_and_loss(g.model, torch.tensor([j]), x, y)
        assert ev["accuracy"][j] == pytest.approx(float(a[0]), abs=1e-6)
        assert ev["loss"][j] == pytest.approx(float(lo[0]), rel=1e-5)


def test_the_memory_estimate_counts_every_domains_test_set(tmp_path, monkeypatch):
    """The shifted run holds one test set per domain, on the driver and in every group; validation's
    estimate (:func:`fedsim.whole_plan.memory_estimate`) counts the rows the run's arrays hold, and
    so refuses a shift whose test sets do not fit where the unshifted run does."""
    from fedsim import limits
    from fedsim.data.datasets import dataset_info
    from fedsim.whole_plan import memory_estimate

    sc = _scenario(tmp_path, **{"engine.num_actors": 2})
    plain = _scenario(tmp_path, **{"engine.num_actors": 2, "dataset.domains": []})
    info = dataset_info("mnist10k")
    f = prepare(sc).features
    row = limits.FLOAT * int(np.prod(f.x_test.shape[1:]))  # bytes of one frozen-prefix input
    assert len(f.x_test) == len(SHIFT) * info.n_test and len(f.x_train) <= info.n_train
    est, _ = memory_estimate(sc, info, None)
    assert est.data == row * (2 * info.n_train + len(f.x_test) * (1 + 2))  # driver + 2 groups
    assert est.data - memory_estimate(plain, info, None)[0].data == row * (len(SHIFT) - 1) * info.n_test * (1 + 2)
    # a domain listed twice (two peers in three on it) is one test set in the run and in the estimate
    twice = _scenario(tmp_path, **{"engine.num_actors": 2, "dataset.domains": ["identity", "invert", "identity"]})
    assert len(prepare(twice).features.x_test) == 2 * info.n_test
    assert memory_estimate(twice, info, None)[0].data == row * (2 * info.n_train + 2 * info.n_test * (1 + 2))
    # validation calls the same estimate: a machine the unshifted run fits, the shifted one not
    fits = (est.total + memory_estimate(plain, info, None)[0].total) // 2
    monkeypatch.setattr(limits, "machine_memory", lambda: fits)
    _scenario(tmp_path, **{"engine.num_actors": 2, "dataset.domains": []})
    with pytest.raises(ScenarioError, match=r"model\.trainable: the run needs about .* data copies"):
        _scenario(tmp_path, **{"engine.num_actors": 2})


@pytest.mark.parametrize("model", [
    # an MLP on the shifted raw images: a few seconds
    {"backbone.name": "identity", "model.hidden": [16], "peers.count": 5, "evaluation.every": 2},
    # FedBN (a CNN, BatchNorm local, one peer per domain): each peer's BatchNorm restored; ~10 s
    pytest.param({"model.bn": "local", "peers.count": 3, "evaluation.every": 4}, marks=pytest.mark.slow),
], ids=["mlp", "fedbn_cnn"])
def test_kill_and_resume_of_a_shifted_run_is_byte_identical(tmp_path, model):
    """A run under the shift, stopped after round 2 (last checkpoint after round 1) and resumed: the
    resumed run rebuilds the shifted inputs and each peer's own test rows and restores the peers'
    state; metrics.jsonl (each peer's accuracy on its own domain's test set) equals the
    uninterrupted run's to the byte."""
    from fedsim.runner import Run

    over = {"rounds": 4, "checkpoint.every": 2, "evaluation.per_peer": True, "training.momentum": 0.5} | model
    full = Run(_scenario(tmp_path, name="full", **over))
    full.create_dir()
    full.execute(log=lambda m: None)
    part_sc = _scenario(tmp_path, name="part", **over)
    r = Run(part_sc)
    r.create_dir()
    r.execute(stop_after=2, log=lambda m: None)
    assert len((r.dir / "metrics.jsonl").read_bytes().splitlines()) == 3
    summary = Run(part_sc, r.dir).execute(resume=True, log=lambda m: None)
    assert summary["resumed_after_round"] == 1
    assert (r.dir / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("bn", ["exchanged", "local"])
def test_bn_local_keeps_each_peers_batchnorm_and_exchanged_equalises_it(tmp_path, bn):
    """Two rounds of FedAvg on the complete graph under the shift: with ``exchanged`` every peer ends
    with the same parameters and running statistics; with ``local`` (FedBN) the non-BatchNorm
    parameters are equal and each peer's BatchNorm parameters and statistics are its own."""
    sc = _scenario(tmp_path, **{"model.bn": bn})
    _, g = wholeutil.group(sc)
    for r in range(2):
        msgs, _ = g.train(r)
        g.aggregate(r, msgs)
    theta, stats, mask = g.model.theta, g.model.stats(), g.model.norm_params
    assert int(mask.sum()) > 0 and stats.shape[1] > 0
    torch.testing.assert_close(theta[:, ~mask], theta[:1, ~mask].expand(g.p, -1))
    if bn == "exchanged":
        torch.testing.assert_close(theta[:, mask], theta[:1, mask].expand(g.p, -1))
        torch.testing.assert_close(stats, stats[:1].expand_as(stats))
    else:
        for i in range(g.p):
            for j in range(i + 1, g.p):
                assert not torch.allclose(theta[i, mask], theta[j, mask]), (i, j)
                assert not torch.allclose(stats[i], stats[j]), (i, j)
        # the inverted domain's first-layer running mean is far from the identity domain's
        mean0 = stats[:, :32].mean(1)
        assert abs(float(mean0[1] - mean0[0])) > 10 * abs(float(mean0[3] - mean0[0]))  # peers 0, 3: identity


def test_where_a_feature_shift_cannot_apply_one_line(tmp_path):
    for over, msg in (
        ({"dataset.domains": ["identity", "invrt"]},
         r"dataset\.domains.*unknown domain 'invrt' \(did you mean 'invert'\?\)"),
        ({"model.trainable": "head", "model.init": "pretrained", "backbone.name": "fmnist_cnn"},
         r"dataset\.domains: a feature shift transforms the raw images before the model, but the default linear head"),
        ({"mode": "federated", "topology.kind": "star"}, r"dataset\.domains: each peer is evaluated on its own domain"),
        ({"peers.count": 2}, r"dataset\.domains: 3 domains for 2 peers"),
        ({"dataset.domains": "invert"}, r"dataset\.domains"),
    ):
        with pytest.raises(ScenarioError, match=msg) as e:
            _scenario(tmp_path, **over)
        assert "\n" not in str(e.value)
    with pytest.raises(ScenarioError, match=r"dataset\.domains: the transforms act on uint8 images") as e:
        _scenario(tmp_path, **{"dataset.name": "npz", "dataset.data_dir": str(_features_npz(tmp_path)),
                               "backbone.name": "identity", "model.hidden": [4], "model.init": "pretrained",
                               "model.trainable": "head"})
    assert "\n" not in str(e.value)


def _features_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "feats.npz"
    np.savez(path, x=rng.normal(size=(60, 5)).astype(np.float32), y=np.arange(60) % 3)
    return path
