"""A group draws every local step's minibatch indices in one call (PeerGroup._minibatches) while
they are few: the same batches, bit for bit, as drawing step by step, on the gathered path, the
small-shard (padded) path and for sampled rows, and above the size limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.scenario import parse


def _group(small_scenario, **over) -> PeerGroup:
    prep = prepare(parse(small_scenario(**over)))
    f = prep.features
    return PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                      "y_test": f.y_test})


@pytest.mark.parametrize("over", [{}, {"peers.count": 200, "training.batch_size": 32}],
                         ids=["gathered", "padded"])
@pytest.mark.parametrize("limit", [PeerGroup.DRAW_AT_ONCE, 1])
def test_all_steps_at_once_equal_step_by_step(small_scenario, monkeypatch, over, limit):
    g = _group(small_scenario, **over)
    assert (g.padded is not None) == bool(over)
    monkeypatch.setattr(PeerGroup, "DRAW_AT_ONCE", limit)
    steps = g.s.training.local_steps
    rows = np.asarray([0, 2, 3])
    for rws in (None, rows):
        got = list(g._minibatches(5, steps, rws))
        want = [g._batch(5, k, rws) for k in range(steps)]
        assert len(got) == steps
        assert not any(all(torch.equal(u, v) for u, v in zip(got[0], b, strict=True)) for b in want[1:])  # steps differ
        for a, b in zip(got, want, strict=True):
            assert len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
