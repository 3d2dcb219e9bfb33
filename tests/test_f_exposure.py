"""``f`` against the honest peers it should cover: ``honest_over_f`` and ``max_byzantine_in_neighbours``
in ``summary.json`` and the API's plan (one computation, :func:`fedsim.runfacts.byzantine_exposure`),
and ``strategy.f: max``, the worst case, on a ring whose in-neighbours are counted by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

import fedsim
from fedsim.scenario import ScenarioError, build_topology, byzantine_mask, parse, resolve_f


def _ring(tmp_path, **strategy):
    return {"name": "ring", "seed": 1, "rounds": 1, "dataset": {"name": "sklearn_digits"},
            "backbone": {"name": "identity", "cache_dir": str(tmp_path / "c")}, "partition": {"kind": "iid"},
            "peers": {"count": 10, "byzantine": 3, "attack": {"name": "sign_flip"}},
            "topology": {"kind": "ring"}, "strategy": {"name": "clipped_gossip", **strategy},
            "training": {"batch_size": 8, "local_steps": 1}, "evaluation": {"every": 1},
            "engine": {"backend": "local", "num_actors": 1}, "output": {"dir": str(tmp_path / "runs")}}


def _by_hand(sc) -> np.ndarray:
    """Each honest peer's Byzantine in-neighbours on the ring: peers i - 1 and i + 1."""
    byz = byzantine_mask(sc)
    n = len(byz)
    return np.array([int(byz[(i - 1) % n]) + int(byz[(i + 1) % n]) for i in range(n) if not byz[i]])


def test_summary_and_plan_say_how_many_honest_peers_f_leaves_uncovered(tmp_path):
    d = _ring(tmp_path)
    heard = _by_hand(parse(d))
    assert heard.tolist() == [0, 1, 1, 1, 2, 1, 0]  # seed 1: one honest peer between two Byzantine
    r = fedsim.run(d)
    summary = json.loads((r.dir / "summary.json").read_text())
    assert summary["f"] == r.plan["f"] == 1  # ⌈3/10 · 2⌉
    over = int((heard > 1).sum())
    assert over == 1
    assert summary["honest_over_f"] == r.plan["honest_over_f"] == over
    assert summary["max_byzantine_in_neighbours"] == r.plan["max_byzantine_in_neighbours"] == 2
    assert list(summary).index("honest_over_f") == list(summary).index("f") + 1


def test_f_max_is_the_most_byzantine_in_neighbours_of_an_honest_peer(tmp_path):
    sc = parse(_ring(tmp_path, f="max"))
    assert resolve_f(sc, build_topology(sc)) == (int(_by_hand(sc).max()), 2.0) == (2, 2.0)
    # federated: every sampled client may be Byzantine, at most min(byzantine, k)
    fed = {**_ring(tmp_path, f="max"), "mode": "federated", "topology": {"kind": "star"}}
    for k, worst in ((2, 2), (5, 3)):
        sc = parse({**fed, "sampling": {"count": k}})
        assert resolve_f(sc, build_topology(sc))[0] == worst
    assert resolve_f(parse({**fed, "strategy": {"name": "fedavg"}, "sampling": {"count": 5}}),
                     build_topology(parse(fed)))[0] == 2  # the default: ⌈3 · 5 / 10⌉
    with pytest.raises(ScenarioError, match="strategy.f"):
        parse(_ring(tmp_path, f="most"))


def test_f_max_runs_with_no_honest_peer_over_it(tmp_path):
    r = fedsim.run(_ring(tmp_path, f="max"))
    assert r.plan["f"] == 2 and r.plan["honest_over_f"] == 0 and r.plan["max_byzantine_in_neighbours"] == 2


def test_exposure_of_keeps_only_the_exposure_facts_in_summary_order():
    """The one filter the summary and ``fedsim.run(...).plan`` share (``runfacts.exposure_of``)."""
    from fedsim.runfacts import exposure_of

    info = {"max_byzantine_in_neighbours": 2, "model": {"batching": "vmap"}, "honest_over_f": 3}
    assert list(exposure_of(info).items()) == [("honest_over_f", 3), ("max_byzantine_in_neighbours", 2)]
    assert exposure_of({"model": {}}) == {}  # a federated run: no exposure computed
