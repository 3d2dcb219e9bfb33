"""A run's set-up, before any actor starts: :func:`prepare` a scenario (features, partition,
Byzantine placement, topology, ``f``, one :class:`~fedsim.group_setup.GroupSetup` per peer group
and the server's) into a :class:`Prepared`. :class:`fedsim.runner.Run` runs it; the Flower bridge,
the probes' retraining and the benchmarks call it too (docs/architecture.md, "The layers").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedlib.heads import num_params as head_params
from fedsim import limits, runfacts
from fedsim import rng as crng
from fedsim.canaries import Canaries, plant
from fedsim.features import Features, load_features
from fedsim.group_setup import GroupSetup
from fedsim.scenario import (
    Scenario,
    build_topology,
    byzantine_exposure,
    byzantine_mask,
    largest_shard,
    partition_for,
    received_per_aggregation,
    resolve_f,
    resource_warnings,
    shard_pad,
    strategy_params,
)
from fedsim.shards import held_classes
from fedsim.threads import group_count, group_threads
from fedsim.topology import Topology

ROOT_SET_SIZE = 100  # the federated server's trusted root set (FLTrust's default |D0|; fltrust's doc says it)


@dataclass
class Prepared:
    scenario: Scenario
    features: Features
    setups: list[GroupSetup]
    server_setup: GroupSetup | None
    byzantine: np.ndarray
    f: int
    num_params: int
    bytes_per_message: int
    root: tuple[np.ndarray, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    topology: Topology | None = None  # built once (scenario.build_topology); the peers and probes use this one
    canaries: Canaries | None = None  # planted by an unlearning probe's ``canaries`` knob
    # bool [N]: the peers that send nothing (a crash attack's Byzantine peers; runfacts.silent_peers)
    silent: np.ndarray | None = None


def _gradient_recording(sc: Scenario, train: list[np.ndarray], byz: np.ndarray,
                        absent: list[int] | None) -> int | None:
    """The leaver of the first unlearning probe (its first-epoch gradients are recorded; the probe
    replays them), or None when no unlearning probe runs or the leaver is absent (the retrain)."""
    from fedsim.canaries import default_leaver

    for p in sc.probes:
        if p.kind == "unlearning":
            peer = p.settings().get("peer")
            peer = default_leaver(train, byz) if peer is None else int(peer)
            return None if absent and peer in absent else peer
    return None


def prepare(sc: Scenario, log: Callable[[str], None] | None = None, absent: list[int] | None = None,
            threads: int | None = None) -> Prepared:
    """Features, partition, Byzantine placement and the per-actor set-ups (no actor started).

    ``absent`` peers take no part (their messages never arrive; the unlearning probe's
    "retrained without that peer" gold standard). ``threads``: the torch threads each group's
    process uses (:func:`group_threads`)."""
    plan = None
    if sc.model.whole:  # more than the linear head is trained (issue 18): fedsim.whole
        from fedsim import whole, whole_plan

        feats, plan = whole_plan.prepare_features(sc, log)
    else:
        feats = load_features(sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir, log)
    n = sc.peers.count
    byz = byzantine_mask(sc)  # these five: the same functions validation calls (fedsim.scenario)
    part = partition_for(sc, feats.y_train, byz)
    # an unlearning probe's canaries join the leaver's shard before training (fedsim.canaries)
    feats, train, canaries = plant(feats, list(part.train), byz, sc.probes, sc.seed)
    val, test_idx = part.val, None
    if sc.dataset.domains:  # feature shift: each peer's images through its domain's transform (fedsim.domain_shift)
        from fedsim.domain_shift import shift

        feats, train, val, test_idx = shift(sc, plan, train, val, log)
    topo = build_topology(sc)
    f, in_degree = resolve_f(sc, topo)
    params = strategy_params(sc)
    c, d = feats.num_classes, feats.dim
    num_params = head_params((c, d), sc.training.bias)
    if plan is not None:
        d, num_params = plan.dim, whole_plan.num_trainable(plan)
    rule = runfacts.build_rule(sc)  # (what the rule reads: its instance's, a pre-aggregator's inner rule's)
    # the class sets peers compare when they connect (Bristle's private-set intersection), for every peer
    classes = held_classes(feats.y_train, train, val, c) if "overlap" in rule.needs else None
    largest = largest_shard(sc, part)  # (the canaries included: what the groups hold; validation's figure)
    # (validation's figure; a whole model's is not warned on: fedsim.runfacts.resource_warnings)
    work = runfacts.training_work(sc, limits.head_flop(c, d), largest) if plan is None else None
    for warning in resource_warnings(sc, largest, work) if log else []:
        log(f"warning: {warning}")
    common = dict(
        shard_pad=shard_pad(largest, sc.training.batch_size) if plan is None else 0,
        byzantine=byz,
        absent=None if not absent else np.isin(np.arange(n), absent),
        threads=group_threads(sc, threads),
        num_peers=n,
        num_classes=c,
        dim=d,
        seed=sc.seed,
        rounds=sc.rounds,
        mode=sc.mode,
        training=sc.training,
        strategy={"name": sc.strategy.name, "params": params},
        f=f,
        received=received_per_aggregation(in_degree),
        attack=sc.peers.attack,
        topology=topo,
        classes=classes,
        plugins=tuple(sc.plugins),
        record_gradients=_gradient_recording(sc, train, byz, absent),
        message_dtype=sc.engine.message_dtype,
        head_dtype=sc.engine.head_dtype,
        aggregate_chunk=sc.engine.aggregate_chunk,
        device=sc.engine.device if plan is None else "cpu",  # (a model section's device travels in its plan)
    )
    actors = group_count(sc)
    blocks = np.array_split(np.arange(n), actors)
    setups = [
        GroupSetup(first=int(b[0]), train_idx=[train[i] for i in b], val_idx=[val[i] for i in b],
                   test_idx=None if test_idx is None else [test_idx[i] for i in b], **common)
        for b in blocks
    ]
    server = GroupSetup(first=0, train_idx=[], val_idx=[], **common) if sc.mode == "federated" else None
    root = None
    if sc.mode == "federated":
        ridx = crng.numpy_generator(sc.seed, "root_set").choice(
            len(feats.y_train), size=min(ROOT_SET_SIZE, len(feats.y_train)), replace=False
        )
        root = (feats.x_train[ridx], feats.y_train[ridx])
    if plan is not None:  # the same set-ups with the model to train
        setups = [whole.with_model(s, plan) for s in setups]
        server = None if server is None else whole.with_model(server, plan)
    info = {
        "peers": n,
        "byzantine_ids": np.flatnonzero(byz).tolist(),
        "f": f,
        "num_params": num_params,
        "feature_dim": d,
        **({} if plan is None else {"model": {"trainable": plan.trainable, "exchange": plan.exchange,
                                              "batching": plan.batching, "bn": plan.bn}}),
        "classes": c,
        "mean_in_degree": in_degree,
        # decentralized: honest peers hearing more than f Byzantine senders (summary.json, RunResult.plan)
        **(byzantine_exposure(sc, topo, f) if sc.mode == "decentralized" else {}),
        "actors": actors,
        "train_samples_per_peer": [int(len(t)) for t in train],
    }
    if sc.dataset.domains:
        from fedsim.data.domains import peer_domains

        info["domains"] = peer_domains(n, sc.dataset.domains)
    if canaries is not None:
        info["canaries"] = {"peer": canaries.peer, "kind": canaries.kind, "members": len(canaries.member_idx),
                            "heldout": len(canaries.heldout_y), "calibration": len(canaries.calibration_y)}
    # bytes: the trainable parameters only (+ BatchNorm statistics sent, − BatchNorm kept, model.bn)
    values = runfacts.message_values(sc, rule, num_params) if plan is None else whole_plan.message_size(plan)
    bytes_per_message = runfacts.bytes_per_message(sc, values)
    return Prepared(sc, feats, setups, server, byz, f, num_params, bytes_per_message, root, info,
                    topology=topo, canaries=canaries, silent=runfacts.silent_peers(sc, byz))
