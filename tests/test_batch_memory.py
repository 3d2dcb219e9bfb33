"""A local step's minibatch in the memory estimate (``fedsim.limits.minibatch_bytes``): hand-computed
bytes for the gathered and the padded path, an absurd ``training.batch_size`` refused by validation's
memory check in one line, the whole-model estimate counting the batch too, and the warning (not an
error) when the batch exceeds every shard."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fedsim import limits
from fedsim.cli import main
from fedsim.data.datasets import dataset_info
from fedsim.scenario import (
    ScenarioError,
    byzantine_mask,
    largest_shard,
    parse,
    parse_with_plan,
    partition_for,
    resource_warnings,
    shard_pad,
)

SMALL = {"dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"}, "partition": {"kind": "iid"},
         "engine": {"backend": "local", "num_actors": 1}}


def test_minibatch_bytes_hand_computed():
    # gathered: draws 2·8·p·B; inputs + index + labels p·B·(4d + 16);
    # logits, log-softmax, gradient and loss, weights 4·p·B·(3C + 2)
    p, b, d, c = 3, 5, 4, 2
    gathered = 2 * 8 * p * b + p * b * (4 * d + 16) + 4 * p * b * (3 * c + 2)
    assert gathered == 1200
    assert limits.minibatch_bytes(per_group=p, batch=b, dim=d, num_classes=c, concurrent=2) == 2 * gathered
    # padded to shards of 4: the draws and their float counts over B, the step over the 4 padded columns
    padded = 2 * 8 * p * b + 4 * p * b + 4 * p * 4 * (3 * c + 2)
    assert limits.minibatch_bytes(per_group=p, batch=b, dim=d, num_classes=c, concurrent=1, padded_to=4) == padded
    est = limits.estimate_memory(peers=3, num_params=10, dim=4, n_train=10, n_test=5, groups=1, concurrent=1,
                                 adam=False, consolidated=False, forged=False, edges=6, ray_actors=0, batches=10**12)
    assert est.total > 10**12 and est.biggest()[0] == "training.batch_size"


def _spy(monkeypatch) -> list[limits.MemoryEstimate]:
    seen: list[limits.MemoryEstimate] = []
    real = limits.memory_error
    monkeypatch.setattr(limits, "memory_error", lambda est, available=None: seen.append(est) or real(est, available))
    return seen


def test_validation_counts_the_runs_minibatch_and_refuses_an_absurd_one(monkeypatch):
    """100 peers in one group, shards of ~14 digits: batch 1,000,000 takes the padded path, whose
    draws alone are 100 × 10⁶ × 20 bytes; on a 1 GiB machine that is refused before anything runs,
    in one line naming training.batch_size, where batch 32 fits."""
    seen = _spy(monkeypatch)
    sc = parse({**SMALL, "peers": {"count": 100}})
    info = dataset_info("sklearn_digits")
    big = largest_shard(sc, partition_for(sc, info.y_train, byzantine_mask(sc)))
    assert big < 32  # the padded path (fedsim.runfacts.shard_pad)
    assert seen[-1].batches == limits.minibatch_bytes(per_group=100, batch=32, dim=64, num_classes=10,
                                                      concurrent=1, padded_to=big)
    monkeypatch.setattr(limits, "machine_memory", lambda: 2**30)
    parse({**SMALL, "peers": {"count": 100}})
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "peers": {"count": 100}, "training": {"batch_size": 1_000_000}})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("scenario: training.batch_size: the run needs about")
    assert "minibatches 1.9 GiB" in msg and "lower training.batch_size" in msg


def test_whole_model_estimate_counts_the_batch(tmp_path):
    from fedsim.whole_plan import memory_estimate

    d = {**SMALL, "peers": {"count": 4}, "topology": {"kind": "complete"},
         "model": {"trainable": "all", "hidden": [16], "init": "scratch"},
         "backbone": {"name": "identity", "cache_dir": str(tmp_path / "c")}}
    info = dataset_info("sklearn_digits")
    one = memory_estimate(parse({**d, "training": {"batch_size": 8}}), info, None)[0]
    two = memory_estimate(parse({**d, "training": {"batch_size": 16}}), info, None)[0]
    # 4 peers in one group, 64 raw inputs gathered per sample, every term linear in B
    assert one.batches == limits.minibatch_bytes(per_group=4, batch=8, dim=64, num_classes=0, concurrent=1) > 0
    assert two.batches == 2 * one.batches


def test_a_batch_above_every_shard_is_a_warning(tmp_path):
    sc = parse({**SMALL, "peers": {"count": 20}})
    big = largest_shard(sc, partition_for(sc, dataset_info("sklearn_digits").y_train, byzantine_mask(sc)))
    path = tmp_path / "s.yaml"
    base = ("dataset: {name: sklearn_digits}\nbackbone: {name: identity}\npartition: {kind: iid}\n"
            "peers: {count: 20}\n")
    for b, warned in ((big, False), (big + 1, True)):
        path.write_text(base + f"training: {{batch_size: {b}}}\n")
        r = CliRunner().invoke(main, ["validate", "--quiet", str(path)])  # (without the plan: "ok" last)
        assert r.exit_code == 0 and r.output.rstrip().endswith("ok"), r.output
        line = f"warning: training.batch_size: {b} exceeds the largest peer's training shard ({big} samples)"
        assert (line in r.output) == warned, r.output


def test_the_padded_shards_are_counted_with_the_data(monkeypatch):
    """The padded path's zero-padded shards (PeerGroup.padded, peers × shard_pad rows) replace the
    peers' training rows: the estimate's data grows by exactly the bytes the group holds beyond them
    (a Dirichlet partition of 100 peers: shards of very unequal size, every one padded to the largest)."""
    from fedsim.peers import PeerGroup
    from fedsim.prepare import prepare

    seen = _spy(monkeypatch)
    d = {**SMALL, "peers": {"count": 100}, "partition": {"kind": "dirichlet", "alpha": 0.3},
         "training": {"batch_size": 512}}
    sc = parse(d)
    plain = seen[-1]
    prep = prepare(sc)
    setup = prep.setups[0]
    assert setup.shard_pad > 0 and len(setup.train_idx) == 100
    f = prep.features
    g = PeerGroup(setup, {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test})
    held = sum(t.numel() * t.element_size() for t in g.padded)
    rows = int(sum(len(t) for t in setup.train_idx))
    extra = held - 4 * 64 * rows  # beyond the float32 training rows the data copies count
    assert extra > 4 * 64 * rows  # (more than doubled by padding)
    assert plain.data - limits.estimate_memory(
        peers=100, num_params=1, dim=64, n_train=dataset_info("sklearn_digits").n_train,
        n_test=dataset_info("sklearn_digits").n_test, groups=1, concurrent=1, adam=False, consolidated=False,
        forged=False, edges=0, ray_actors=0).data == extra
    assert limits.padded_bytes(peers=100, pad=setup.shard_pad, dim=64, train_rows=rows) == extra


def test_the_federated_servers_float64_scratch_is_counted(monkeypatch):
    """A federated rule with ``float64_input`` (fedavg) makes the server keep a float64 ``[N, P]``
    scratch (Server._scratch): the estimate's messages grow by exactly its bytes."""
    import numpy as np

    import strategies
    from fedsim.prepare import prepare
    from fedsim.server import Server

    seen = _spy(monkeypatch)
    d = {**SMALL, "mode": "federated", "topology": {"kind": "star"}, "peers": {"count": 10}}
    sc = parse(d)
    with_scratch = seen[-1].messages
    prep = prepare(sc)
    server = Server(prep.server_setup, *prep.root)
    server.aggregate(0, np.ones((10, prep.num_params), dtype=np.float32))
    assert server.work is not None and server.work.dtype.itemsize == 8
    monkeypatch.setattr(strategies.REGISTRY.get("fedavg"), "float64_input", False)
    parse(d)
    assert with_scratch - seen[-1].messages == server.work.nbytes > 0


def test_validation_and_the_run_agree_on_the_largest_shard_with_canaries(monkeypatch):
    """An unlearning probe's member canaries join the leaver's shard: ``fedsim validate``'s figure
    (the batch warning), validation's memory estimate and the run's ``shard_pad`` all count them
    (``runfacts.largest_shard``). A batch between the plain largest shard and the leaver's with its
    canaries: padded without them, gathered with them, and no warning."""
    from fedsim.prepare import prepare

    seen = _spy(monkeypatch)
    base = {**SMALL, "peers": {"count": 20}}
    plain = parse_with_plan(base)[1].largest_shard
    assert plain is not None
    batch = plain + 20
    sc, plan = parse_with_plan({**base, "training": {"batch_size": batch},
                                "probes": [{"kind": "unlearning", "canaries": {"count": 40, "heldout": 100}}]})
    validated = seen[-1]
    prep = prepare(sc)
    held = max(len(t) for s in prep.setups for t in s.train_idx)
    assert held == plain + 40 and prep.canaries is not None  # control: the canaries made the largest shard
    assert plan.largest_shard == held
    assert resource_warnings(sc, plan.largest_shard) == []  # batch <= the leaver's shard: no warning
    assert prep.setups[0].shard_pad == shard_pad(held, batch) == 0  # gathered (without canaries: padded)
    assert validated.batches == limits.minibatch_bytes(per_group=20, batch=batch, dim=64, num_classes=10,
                                                       concurrent=1, padded_to=0)
    assert validated.batches != limits.minibatch_bytes(per_group=20, batch=batch, dim=64, num_classes=10,
                                                       concurrent=1, padded_to=plain)


def test_in_process_the_estimate_counts_groups_training_side_by_side_and_aggregating_one_at_a_time(monkeypatch):
    """fedsim.threads.groups_at_once: in-process with ``auto`` (2 groups, 2 CPUs) both groups' minibatches
    and gradients exist at once but one group's concatenated messages (a forger makes each group join
    every message), as `engine.local_parallel: off` counts one of each; on Ray every group's of both."""
    import os

    from fedsim.threads import groups_at_once

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen = _spy(monkeypatch)
    d = {**SMALL, "engine": {"backend": "local", "num_actors": 2, "local_parallel": "auto"},
         "peers": {"count": 10, "byzantine": 2, "attack": {"name": "alie"}},
         "topology": {"kind": "k_regular", "degree": 4}}
    auto = parse(d)
    side = seen[-1]
    off = parse({**d, "engine": {**d["engine"], "local_parallel": "off"}})
    one = seen[-1]
    ray = parse({**d, "engine": {**d["engine"], "backend": "ray"}})
    every = seen[-1]
    assert [groups_at_once(sc, ph) for sc in (auto, off, ray) for ph in ("train", "aggregate")] == [2, 1, 1, 1, 2, 2]
    assert side.batches == 2 * one.batches > 0 and side.messages == one.messages
    assert every.messages > one.messages  # two groups join every message at once
    with pytest.raises(ValueError, match="phase"):
        groups_at_once(auto, "evaluate")


def test_estimate_memory_counts_training_and_aggregating_groups_apart():
    base = dict(peers=10, num_params=100, dim=8, n_train=100, n_test=10, groups=2, adam=False, consolidated=False,
                forged=True, edges=0, ray_actors=0, gradient_peers=5)
    a = limits.estimate_memory(**base, concurrent=1, training_concurrent=2)
    b = limits.estimate_memory(**base, concurrent=2)
    c = limits.estimate_memory(**base, concurrent=1)
    assert a.heads == b.heads > c.heads  # gradients: the training groups
    assert a.messages == c.messages < b.messages  # concatenated messages: the aggregating groups
