"""The vectorised paths of the engine give the numbers of the per-peer ones.

* ``Strategy.aggregate_batch`` (FedAvg, Bristle; median, trimmed mean, Krum, Multi-Krum and centered
  clipping through the group test below) row for row equals ``__call__`` — to the bit,
  whatever other peers share the batch and however the validation sets are padded.
* ``PeerGroup.aggregate`` with the batched path equals the per-peer loop, to the bit.
* Small shards train on draw-count weights (``GroupSetup.shard_pad``): the same gradient as the
  gathered minibatch; a run with such shards stays independent of the actor layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

import strategies
from fedsim import heads
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.runner import Run
from fedsim.scenario import parse
from strategies import AggregationContext, Strategy, build

C, D = 4, 6
P = C * D + C


def _peers(g: int, n: int, seed: int = 0, classes_missing: bool = True):
    """``g`` peers that heard ``n`` vectors each, with validation sets of different sizes."""
    gen = torch.Generator().manual_seed(seed)
    own = torch.randn(g, P, generator=gen)
    received = own[:, None] + 0.5 * torch.randn(g, n, P, generator=gen)
    sizes = [3 + (i * 5) % 9 for i in range(g)]
    vals = []
    for i, m in enumerate(sizes):
        y = torch.randint(C - 1 if classes_missing and i % 2 else C, (m,), generator=gen)
        vals.append((torch.randn(m, D, generator=gen) + 2 * torch.eye(C, D)[y], y))
    return own, received, vals


def _padded(vals):
    m = max(len(y) for _, y in vals)
    vx, vy, mask = torch.zeros(len(vals), m, D), torch.zeros(len(vals), m, dtype=torch.long), torch.zeros(
        len(vals), m, dtype=torch.bool
    )
    for i, (x, y) in enumerate(vals):
        vx[i, : len(y)], vy[i, : len(y)], mask[i, : len(y)] = x, y, True
    return vx, vy, mask


def _batch_ctx(vals, local_classes=None) -> AggregationContext:
    vx, vy, mask = _padded(vals)
    return AggregationContext(
        layer_shape=(C, D), bias=True, val_x=vx, val_y=vy, val_mask=mask, local_classes=local_classes
    )


BRISTLE_MODES = [
    {},  # the authors' April code: overlap classes, recall, sequential penalty, class-row mean removal
    {"classes": "top", "top": 1},
    {"classes": "top", "top": 2, "metric": "f1", "sequential_penalty": 0.0},  # the May code
    {"classes": "all"},
    {"mean_removal": "feature"},
    {"mean_removal": "none", "unfamiliar_score": "mean"},
    {"selection": "thirds", "classes": "all", "metric": "f1", "sequential_penalty": 0.0, "mean_removal": "feature"},
    {"precision": "float32"},  # the authors' float32 arithmetic (issue 19): per peer as well
    {"precision": "float32", "classes": "all", "mean_removal": "feature", "weight_offset": -1.0},
]


def _overlaps(g: int, n: int, seed: int = 1) -> torch.Tensor:
    """Claimed overlaps ``[g, n]`` in 0..C, with zeros (senders that share no class) and one peer
    that shares no class with anybody."""
    ov = torch.randint(C + 1, (g, n), generator=torch.Generator().manual_seed(seed))
    ov[0] = 0
    return ov


@pytest.mark.parametrize("params", BRISTLE_MODES)
@pytest.mark.parametrize(("local_classes", "overlap"), [(False, False), (True, False), (True, True)])
def test_bristle_batch_equals_per_peer_call_bit_for_bit(params, local_classes, overlap):
    rule = build("bristle", params)
    own, received, vals = _peers(9, 5)
    fam = torch.stack([torch.bincount(y, minlength=C) > 0 for _, y in vals]) if local_classes else None
    ov = _overlaps(9, 5) if overlap else None
    out = rule.aggregate_batch(own, received, replace(_batch_ctx(vals, fam), overlap=ov))
    assert out is not None and out.shape == own.shape
    for i, (x, y) in enumerate(vals):
        ctx = AggregationContext(
            layer_shape=(C, D), bias=True, val_x=x, val_y=y, local_classes=None if fam is None else fam[i],
            overlap=None if ov is None else ov[i],
        )
        assert torch.equal(out[i], rule(own[i], received[i], ctx)), i
        # alone in its batch, unpadded: the same bits again
        one = replace(_batch_ctx([(x, y)], None if fam is None else fam[i : i + 1]),
                      overlap=None if ov is None else ov[i : i + 1])
        alone = rule.aggregate_batch(own[i : i + 1], received[i : i + 1], one)
        assert torch.equal(alone[0], out[i])
    # and the batch really integrates: every peer that shares a class moved towards what it heard
    assert not torch.equal(out[1:], own[1:])
    if overlap and rule.classes == "overlap":
        assert torch.equal(out[0], own[0])  # it shares no class with anybody: nothing moves


def test_bristle_batch_declines_where_candidates_must_be_sampled():
    own, received, vals = _peers(2, 4)
    for params in [{"selection": "thirds", "num_candidates": 3}, {"selection": "shuffle", "num_candidates": 3},
                   {"selection": "nearest_random", "k": 2, "e": 1}]:
        rule = build("bristle", params)
        assert rule.aggregate_batch(own, received, _batch_ctx(vals)) is None
        assert rule.aggregate_batch(own, received[:, :3], _batch_ctx(vals)) is not None
    assert build("bristle").aggregate_batch(own, received, _batch_ctx(vals)) is not None  # 20 + 5


@pytest.mark.parametrize("include_own", [True, False])
def test_fedavg_batch_equals_per_peer_call(include_own):
    rule = build("fedavg", {"include_own": include_own})
    own, received, _ = _peers(5, 3)
    out = rule.aggregate_batch(own, received, AggregationContext(layer_shape=(C, D)))
    for i in range(5):
        assert torch.equal(out[i], rule(own[i], received[i], AggregationContext(layer_shape=(C, D))))
    expected = (own + received.sum(1)) / 4 if include_own else received.mean(1)
    torch.testing.assert_close(out, expected)


@dataclass
class _NaNOnFirstRow(Strategy):
    def aggregate_batch(self, own, received, ctx):
        out = received.mean(dim=1)
        out[0, 0] = float("nan")
        return out


def test_aggregate_batch_keeps_own_where_the_rule_gives_non_finite_values():
    own, received, _ = _peers(3, 2)
    out = strategies.aggregate_batch(_NaNOnFirstRow(), own, received, AggregationContext(layer_shape=(C, D)))
    assert torch.equal(out[0], own[0])
    torch.testing.assert_close(out[1:], received[1:].mean(1))
    assert strategies.aggregate_batch(build("bulyan"), own, received, AggregationContext(layer_shape=(C, D))) is None


def test_weighted_minibatch_gradient_equals_gathered_minibatch():
    gen = torch.Generator().manual_seed(1)
    p, n, B, d = 4, 5, 16, 7
    x, y = torch.randn(p, n, d, generator=gen), torch.randint(3, (p, n), generator=gen)
    w, b = torch.randn(p, 3, d, generator=gen), torch.randn(p, 3, generator=gen)
    draw = torch.randint(n, (p, B), generator=gen)
    xg, yg = x.gather(1, draw[..., None].expand(p, B, d)), y.gather(1, draw)
    weights = torch.zeros(p, n).scatter_add_(1, draw, torch.ones(p, B)) / B
    for got, want in zip(heads.ce_grad(w, b, x, y, weights), heads.ce_grad(w, b, xg, yg), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _small_shards(small_scenario, **over):
    # 150 peers on 1,797 digits: ≤ 12 training samples each, batch 16 → draw-count weights
    return small_scenario(
        **{
            "peers.count": 150,
            "partition.kind": "iid",
            "topology.kind": "push_gossip",
            "topology.fanout": 5,
            "strategy.name": "bristle",
            "training.lr": 0.5,
            **over,
        }
    )


def test_small_shards_train_on_weights_and_runs_stay_layout_independent(small_scenario, ray_session):
    sc = parse(_small_shards(small_scenario))
    prep = prepare(sc)
    assert 0 < prep.setups[0].shard_pad <= sc.training.batch_size
    assert {s.shard_pad for s in prep.setups} == {prep.setups[0].shard_pad}
    out = []
    for name, over in [("one", {"engine.num_actors": 1}), ("three", {"engine.num_actors": 3}),
                       ("ray2", {"engine.num_actors": 2, "engine.backend": "ray"})]:
        r = Run(parse(_small_shards(small_scenario, name=name, **over)))
        r.create_dir()
        r.execute()
        out.append((r.dir / "metrics.jsonl").read_bytes())
    assert out[0] == out[1] == out[2]
    last = json.loads(out[0].splitlines()[-1])
    # it learns (10 classes: chance is 0.1), if slowly: Bristle scores candidates on 1-2 samples
    assert last["accuracy_mean"] > 0.3


def _group(small_scenario, strategy: str, attack: str = "none", **over):
    sc = parse(
        _small_shards(
            small_scenario,
            **{
                "strategy.name": strategy,
                "peers.byzantine_fraction": 0.0 if attack == "none" else 0.2,
                "peers.attack.name": attack,
                **over,
            },
        )
    )
    prep = prepare(sc)
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    return [PeerGroup(s, feats) for s in prep.setups]


def _rounds(groups, rounds: int = 3) -> tuple[np.ndarray, list[dict]]:
    stats = []
    for r in range(rounds):
        params = [g.train(r)[0] for g in groups]
        stats += [g.aggregate(r, *params) for g in groups]
    return np.concatenate([g.params() for g in groups]), stats


WINDOWS = {"partition.kind": "windows", "partition.window": 2}  # many senders share no class


@pytest.mark.parametrize(
    ("strategy", "attack", "over"),
    [
        ("bristle", "none", {}),
        ("bristle", "nan", {}),
        ("bristle", "label_shift", {**WINDOWS, "partition.byzantine_classes": "all"}),  # overlap 0 and CWR
        ("bristle", "none", {**WINDOWS, "strategy.params": {"cwr": False, "classes": "top", "top": 1}}),
        ("fedavg", "alie", {}),
        ("median", "alie", {}),
        ("trimmed_mean", "sign_flip", {}),
        ("krum", "alie", {}),
        ("multikrum", "nan", {}),
        ("centered_clipping", "alie", {"strategy.params": {"iterations": 2, "tau": 0.5}}),
    ],
)
def test_peer_group_batched_aggregation_equals_per_peer_loop(small_scenario, monkeypatch, strategy, attack, over):
    monkeypatch.setattr(type(build(strategy)), "batch_on_cpu", True)  # (batched on the CPU too, as on a device)
    calls = []
    per_peer = strategies.aggregate
    monkeypatch.setattr(strategies, "aggregate", lambda *a, **k: calls.append(1) or per_peer(*a, **k))
    batched, stats_b = _rounds(_group(small_scenario, strategy, attack, **over))
    assert len(calls) < 0.1 * 150 * 3  # (push gossip, fanout 5: a peer hears ~5 <= 10 candidates)
    monkeypatch.setattr(strategies, "aggregate", per_peer)
    rule = type(build(strategy))
    monkeypatch.setattr(rule, "aggregate_batch", Strategy.aggregate_batch)  # the per-peer loop only
    monkeypatch.setattr(rule, "call_is_batched", False)
    looped, stats_l = _rounds(_group(small_scenario, strategy, attack, **over))
    np.testing.assert_array_equal(batched, looped)
    assert stats_b == stats_l
    if attack == "nan":
        assert sum(s["dropped"] for s in stats_b) > 0


def test_finite_rows_is_exact_where_row_sums_overflow_or_cancel():
    big = torch.finfo(torch.float32).max
    x = torch.zeros(6, 4)
    x[1, 0] = float("nan")
    x[2, 3] = float("inf")
    x[3, :2] = torch.tensor([float("inf"), -float("inf")])  # the sum is NaN, not a cancellation to 0
    x[4] = big  # finite entries whose sum overflows: still a finite row
    x[5, 1] = -float("inf")
    assert strategies.finite_rows(x).tolist() == [True, False, False, False, True, False]
    assert torch.equal(strategies.finite_rows(x), torch.isfinite(x).all(dim=1))
    s = strategies.sanitize(x, 4)
    assert s.dropped == 4 and torch.equal(s.received, x[[0, 4]])


def test_sanitize_a_list_drops_wrong_shapes_and_non_finite_rows_naming_senders_in_order():
    good = torch.ones(4)
    rows = [good, torch.full((4,), float("nan")), torch.ones(5), good * 2, torch.ones(2, 2)]
    s = strategies.sanitize(rows, 4)
    assert torch.equal(s.received, torch.stack([good, good * 2])) and s.dropped == 3
    assert s.reasons == [
        "sender 1: non-finite values",
        "sender 2: shape (5,) != (4,)",
        "sender 4: shape (2, 2) != (4,)",
    ]
    empty = strategies.sanitize([], 4)
    assert empty.received.shape == (0, 4) and empty.dropped == 0
