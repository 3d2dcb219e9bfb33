"""The engine side of Bristle as its authors run it: Byzantine peers that hold every class, exactly
``per_class`` samples of each held class, the class sets peers compare when they connect, and
consolidated weights (only a peer's own classes are trained into the head it sends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim import heads
from fedsim.messages import claimed_classes
from fedsim.partition import make_partition
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.scenario import ScenarioError, load, parse
from fedsim.shards import held_classes

Y = np.repeat(np.arange(10), 100)
REPRO = Path(__file__).parent.parent / "scenarios" / "bristle-repro"


def test_byzantine_peers_hold_every_class_and_honest_peers_get_the_windows_in_order():
    byz = np.zeros(15, dtype=bool)
    byz[[0, 4, 5, 9, 14]] = True
    p = make_partition("windows", Y, 15, seed=0, window=4, per_class=4, val_fraction=0.5, all_classes=byz)
    honest = np.flatnonzero(~byz)
    for k, i in enumerate(honest):
        assert set(Y[p.train[i]]) == set(Y[p.val[i]]) == {(k + j) % 10 for j in range(4)}
    for i in np.flatnonzero(byz):
        assert set(Y[p.train[i]]) == set(range(10))
    for t, v in zip(p.train, p.val, strict=True):  # exactly 2 + 2 samples of each held class
        assert set(np.bincount(Y[t])[np.unique(Y[t])]) == {2} and set(np.bincount(Y[v])[np.unique(Y[v])]) == {2}
    everything = np.concatenate([*p.train, *p.val])
    assert len(np.unique(everything)) == len(everything)  # no sample twice


def test_per_class_errors_name_the_field():
    with pytest.raises(ValueError, match="partition.per_class=40"):
        make_partition("windows", Y, 10, seed=0, window=4, per_class=40)
    with pytest.raises(ValueError, match="kind"):
        make_partition("iid", Y, 10, seed=0, per_class=2)


def test_scenario_rejects_the_options_for_other_kinds(small_scenario):
    with pytest.raises(ScenarioError, match=r"partition\.per_class: used only by kinds classes, windows"):
        parse(small_scenario(**{"partition.kind": "iid", "partition.per_class": 2}))
    with pytest.raises(ScenarioError, match=r"partition\.byzantine_classes: used only by kinds classes, windows"):
        parse(small_scenario(**{"partition.byzantine_classes": "all"}))


def test_repro_scenarios_validate():
    names = sorted(p.name for p in REPRO.glob("*.yaml"))
    assert {"windows4.yaml", "windows2.yaml"} <= set(names)
    for path in REPRO.glob("*.yaml"):
        load(path)


def _windows(small_scenario, **over):
    return parse(small_scenario(**{
        "peers.count": 15, "peers.byzantine": 5, "peers.attack.name": "label_shift",
        "partition.kind": "windows", "partition.window": 2, "partition.byzantine_classes": "all",
        "topology.kind": "complete", "strategy.name": "bristle", **over,
    }))


def test_prepare_hands_every_group_the_class_sets_when_the_rule_compares_them(small_scenario):
    prep = prepare(_windows(small_scenario))
    classes = prep.setups[0].classes
    f = prep.features
    assert classes.shape == (15, 10)
    part_train = [t for s in prep.setups for t in s.train_idx]
    part_val = [v for s in prep.setups for v in s.val_idx]
    assert np.array_equal(classes, held_classes(f.y_train, part_train, part_val, 10))
    assert classes[prep.byzantine].all() and (classes[~prep.byzantine].sum(1) == 2).all()
    claimed = claimed_classes(np.zeros((3, 4), dtype=bool), np.array([False, True, False]))
    assert claimed.tolist() == [[False] * 4, [True] * 4, [False] * 4]
    assert prepare(_windows(small_scenario, **{"strategy.name": "fedavg"})).setups[0].classes is None


def _group(small_scenario, **over) -> PeerGroup:
    prep = prepare(_windows(small_scenario, **{"engine.num_actors": 1, **over}))
    f = prep.features
    return PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                      "y_test": f.y_test})


def test_consolidated_weights_train_only_the_own_classes_rows(small_scenario):
    g = _group(small_scenario)
    assert g.cwr
    g.w.normal_(generator=torch.Generator().manual_seed(0))
    before = g.w.clone()
    sent, _ = g.train(0)
    own = g.local_classes
    w = torch.from_numpy(sent)[:, : 10 * g.s.dim].reshape(g.p, 10, -1)
    assert torch.equal(w[~own], before[~own])  # foreign rows: untouched by training
    assert not torch.equal(w[own], before[own])  # own rows: trained
    assert torch.equal(w[own], g.tw[own])  # ... and equal to the trained copy's
    assert not torch.equal(g.tw[~own], before[~own])  # the copy trained every row
    # the integration moves foreign rows (from the sent heads of others) and starts from the copy
    g.aggregate(0, sent)
    honest = ~torch.from_numpy(g.is_byz)
    assert not torch.equal(g.w[honest][~own[honest]], before[honest][~own[honest]])
    # without CWR the head itself is trained in place
    plain = _group(small_scenario, **{"strategy.params": {"cwr": False}})
    assert not plain.cwr and plain.tw is plain.w


def test_consolidate_copies_rows_by_mask():
    w, b = torch.zeros(2, 3, 2), torch.zeros(2, 3)
    tw, tb = torch.ones(2, 3, 2), torch.ones(2, 3)
    own = torch.tensor([[True, False, True], [False, False, False]])
    heads.consolidate(w, b, tw, tb, own)
    assert w[0, :, 0].tolist() == [1, 0, 1] and w[1].sum() == 0 and b.tolist() == [[1, 0, 1], [0, 0, 0]]


def test_overlap_counts_what_the_receiver_shares_with_each_sender(small_scenario):
    g = _group(small_scenario)
    j = int(np.flatnonzero(~g.is_byz)[0])
    senders = torch.arange(15)
    ov = g._overlap(torch.tensor(j), senders)
    mine = g.local_classes[j]
    for s in range(15):
        expect = int(mine.sum()) if g.s.byzantine[s] else int((torch.from_numpy(g.s.classes[s]) & mine).sum())
        assert int(ov[s]) == expect
