"""Canaries (fedsim.canaries): planted in the leaver's shard before training, matched held-out
canaries never given to any peer, deterministic from the seed; validation names the key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedsim.canaries import plant, planted_sizes, stopping_reference, validate
from fedsim.features import Features


def _feats(n: int = 600, d: int = 8, c: int = 4) -> Features:
    g = np.random.default_rng(0)
    return Features(g.normal(size=(n, d)).astype(np.float32), g.integers(0, c, n), g.normal(size=(50, d)),
                    g.integers(0, c, 50), c, "test")


def _train(n: int = 600, peers: int = 4) -> list[np.ndarray]:
    return [np.asarray(a) for a in np.array_split(np.arange(n), peers)]


def _probe(**canaries: Any) -> list[dict[str, Any]]:
    return [{"kind": "cloning"}, {"kind": "unlearning", "canaries": {"count": 20, "heldout": 100, **canaries}}]


@pytest.mark.parametrize("kind", ["mislabelled", "ood"])
def test_plant_adds_members_to_the_leaver_only(kind: str) -> None:
    f, train = _feats(), _train()
    train[2] = np.concatenate([train[2], [0, 1]])  # peer 2: the largest honest shard → default leaver
    byz = np.array([False, False, False, True])
    nf, nt, can = plant(f, train, byz, _probe(kind=kind), seed=5)
    assert can is not None and can.peer == 2 and can.kind == kind
    assert np.array_equal(can.member_idx, np.arange(600, 620))
    assert nf.x_train.shape == (620, 8) and nf.y_train.shape == (620,) and nf.x_test is f.x_test
    assert np.array_equal(nf.x_train[:600], f.x_train)  # nobody's data changed
    assert np.array_equal(nt[2], np.concatenate([train[2], can.member_idx]))
    assert all(np.array_equal(nt[j], train[j]) for j in (0, 1, 3))
    # the 100 held-out canaries: half (the default) for the stopping rule's reference, half for evaluation
    assert can.heldout_x.shape == (50, 8) and can.heldout_y.shape == (50,)
    assert can.calibration_x.shape == (50, 8) and can.calibration_y.shape == (50,)
    # members and held-out canaries are different draws of one construction
    assert not (nf.x_train[600:, None, :] == can.heldout_x[None]).all(-1).any()
    again = plant(f, train, byz, _probe(kind=kind), seed=5)[2]
    assert again is not None and np.array_equal(again.heldout_x, can.heldout_x)  # deterministic
    other = plant(f, train, byz, _probe(kind=kind), seed=6)[2]
    assert other is not None and not np.array_equal(other.heldout_x, can.heldout_x)


def test_mislabelled_canaries_copy_other_peers_examples_with_wrong_labels() -> None:
    f, train = _feats(), _train()
    nf, _, can = plant(f, train, np.zeros(4, bool), [{"kind": "unlearning", "peer": 1,
                                                      "canaries": {"count": 20, "heldout": 100}}], seed=1)
    assert can is not None and can.peer == 1
    xs = np.concatenate([nf.x_train[can.member_idx], can.heldout_x])
    ys = np.concatenate([nf.y_train[can.member_idx], can.heldout_y])
    src = [int(np.flatnonzero((f.x_train == x).all(1))[0]) for x in xs]
    assert not np.isin(src, train[1]).any()  # never the leaver's own examples
    assert (f.y_train[src] != ys).all()  # always a wrong label
    assert len(set(src)) == len(src)


@pytest.mark.parametrize("named", [None, 1])
def test_planted_sizes_are_the_planted_shards(named: int | None) -> None:
    """What validation counts (``runfacts.largest_shard``) is what :func:`plant` gives the groups:
    the default leaver (peer 2, the largest honest shard) or a named one (peer 1) grows by ``count``."""
    f, train = _feats(), _train()
    train[2] = np.concatenate([train[2], [0, 1]])
    byz = np.array([False, False, False, True])
    probes = [{"kind": "unlearning", "peer": named, "canaries": {"count": 20, "heldout": 100}}]
    sizes = planted_sizes(train, byz, probes)
    assert sizes.tolist() == [len(t) for t in plant(f, train, byz, probes, seed=3)[1]]
    assert sizes[2 if named is None else 1] == len(train[2 if named is None else 1]) + 20
    assert planted_sizes(train, byz, [{"kind": "unlearning"}]).tolist() == [len(t) for t in train]  # no canaries


def test_no_canaries_is_a_no_op() -> None:
    f, train = _feats(), _train()
    nf, nt, can = plant(f, train, np.zeros(4, bool), [{"kind": "unlearning"}], seed=0)
    assert can is None and nf is f and nt is train


@pytest.mark.parametrize(("value", "key"), [
    ({"count": 1}, "count"), ({"kind": "noise"}, "kind"), ({"scale": 0}, "scale"), ({"heldout": 2.5}, "heldout"),
    ({"repeats": 2}, "repeats"), ("50", "canaries"), ({"calibration": 999}, "calibration"),
    ({"calibration": -1}, "calibration"), ({"calibration": 0.5}, "calibration"), ({"calibration": True}, "calibration"),
])
def test_validation_names_the_key(value: Any, key: str) -> None:
    with pytest.raises(ValueError, match=rf"probes\.0\.canaries(\.{key})?: ") as e:
        validate("probes.0.canaries", value)
    assert "\n" not in str(e.value)


def test_too_few_sources_and_two_planting_probes() -> None:
    f, train = _feats(n=100), _train(n=100)
    with pytest.raises(ValueError, match=r"probes\.0\.canaries: .* source examples"):
        plant(f, train, np.zeros(4, bool), [{"kind": "unlearning", "canaries": {"count": 50, "heldout": 50}}], 0)
    two = [{"kind": "unlearning", "canaries": {}}, {"kind": "unlearning", "canaries": {}}]
    with pytest.raises(ValueError, match=r"probes\.1\.canaries: only one"):
        plant(f, train, np.zeros(4, bool), two, 0)


def test_calibration_split_is_a_disjoint_part_of_one_draw() -> None:
    """``calibration: k`` moves k held-out canaries to the stopping rule's reference; members,
    calibration and evaluation canaries are disjoint parts of one draw (the same draw as without a
    split, so only the labelling of the held-out part changes)."""
    f, train = _feats(), _train()
    byz = np.zeros(4, bool)
    nf, _, can = plant(f, train, byz, _probe(kind="ood", calibration=30), seed=5)
    _, _, whole = plant(f, train, byz, _probe(kind="ood", calibration=0), seed=5)
    assert can is not None and whole is not None
    assert can.calibration_x.shape == (30, 8) and can.heldout_x.shape == (70, 8) and len(whole.calibration_y) == 0
    assert np.array_equal(np.concatenate([can.calibration_x, can.heldout_x]), whole.heldout_x)
    assert np.array_equal(np.concatenate([can.calibration_y, can.heldout_y]), whole.heldout_y)
    members = nf.x_train[can.member_idx]
    for a, b in ((can.calibration_x, can.heldout_x), (can.calibration_x, members)):
        assert not (a[:, None, :] == b[None]).all(-1).any()
    assert validate("w", {"heldout": 3})["calibration"] == 1  # null: half, at least 2 left for evaluation
    assert validate("w", {"heldout": 2})["calibration"] == 0


def test_stopping_reference_strata() -> None:
    """Reference = natural calibration split + calibration canaries; strata ``class + C·[canary]``
    on both sides; without calibration canaries the natural split and no strata."""
    f, train = _feats(), _train()
    nf, nt, can = plant(f, train, np.zeros(4, bool), _probe(kind="ood", calibration=30), seed=5)
    assert can is not None
    peer, c = can.peer, 4
    fy = nf.y_train[nt[peer]]
    rx, ry = np.asarray(f.x_test, np.float64), np.asarray(f.y_test)
    x, y, fs, rs = stopping_reference(can, nt[peer], fy, rx, ry, c)
    assert x.shape == (80, 8) and np.array_equal(x[50:], can.calibration_x.astype(np.float64))
    assert fs is not None and rs is not None
    is_can = np.isin(nt[peer], can.member_idx)
    assert np.array_equal(fs, fy + c * is_can) and is_can.sum() == 20
    assert np.array_equal(rs, np.r_[ry, can.calibration_y + c])
    _, _, none = plant(f, train, np.zeros(4, bool), _probe(kind="ood", calibration=0), seed=5)
    x0, y0, fs0, rs0 = stopping_reference(none, nt[peer], fy, rx, ry, c)
    assert x0 is rx and y0 is ry and fs0 is None and rs0 is None
