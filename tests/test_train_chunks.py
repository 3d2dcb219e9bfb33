"""``engine.train_chunk``: a group's local steps run a chunk of peers at a time (issue 19, the
100,000-peer round); every operation of a step is per peer, so the heads, optimizer buffers, losses
and messages equal one pass over the whole group bit for bit, whatever the chunk."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.peers import PeerGroup
from fedsim.runner import prepare
from fedsim.scenario import parse


def _trained(small_scenario, chunk: int, rounds: int = 2, **over) -> tuple[PeerGroup, list]:
    d = small_scenario(**{"peers.count": 120, "partition.kind": "iid", "topology.kind": "push_gossip",
                          "topology.fanout": 3, "strategy.name": "bristle", "engine.num_actors": 1,
                          "engine.train_chunk": chunk, **over})
    prep = prepare(parse(d))
    f = prep.features
    g = PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                   "y_test": f.y_test})
    out = []
    for r in range(rounds):
        msg, loss = g.train(r)
        out.append((msg.copy(), loss))
        g.aggregate(r, msg)
    return g, out


@pytest.mark.parametrize(
    "over",
    [
        {},  # padded shards (tiny), SGD with momentum
        {"peers.count": 12, "training.batch_size": 4},  # larger shards: gathered minibatches
        {"training.optimizer": "adam", "training.lr": 0.01},
        {"training.weight_decay": 0.01, "training.bias": False, "strategy.name": "fedavg"},
    ],
)
def test_chunked_local_steps_equal_one_pass_over_the_group(small_scenario, over):
    whole, want = _trained(small_scenario, 1_000_000, **over)
    assert (whole.padded is not None) == ("peers.count" not in over)
    for chunk in (7,):
        g, got = _trained(small_scenario, chunk, **over)
        assert g.p > chunk
        for (m1, l1), (m2, l2) in zip(got, want, strict=True):
            assert np.array_equal(m1, m2) and l1 == l2
        assert torch.equal(g.w, whole.w) and torch.equal(g.b, whole.b)
        assert torch.equal(g.opt.m_w, whole.opt.m_w) and torch.equal(g.opt.m_b, whole.opt.m_b)
        assert g.opt.t == whole.opt.t
        if whole.opt.v_w is not None:
            assert torch.equal(g.opt.v_w, whole.opt.v_w)
            assert whole.opt.t == 2 * whole.s.training.local_steps  # Adam counts the group's steps, not chunks'
