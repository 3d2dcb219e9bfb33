"""A round's SGD steps chunk by chunk of peers (heads.local_steps on PeerGroup._minibatches'
StepBatches: each chunk through all its steps, its rows gathered into one kept buffer) give the
heads, momentum and loss of the whole group stepping through fresh batches, bit for bit: on the
gathered and the padded path, for sampled rows, with a last partial chunk, lr 1 (whose exact
multiplication is skipped) and not, and with groups of other batch shapes using the same kept
buffer in between (a stale or wrongly shaped buffer would show)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim import heads
from fedsim.minibatches import StepBatches
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.scenario import parse
from fedsim.schema import TrainingCfg


def _group(small_scenario, **over) -> PeerGroup:
    prep = prepare(parse(small_scenario(**over)))
    f = prep.features
    return PeerGroup(prep.setups[0], {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test,
                                      "y_test": f.y_test})


def _steps(g: PeerGroup, cfg: TrainingCfg, round_: int, rows, chunk_major: bool):
    """Train copies of g's heads (randomised from the round) through round_'s batches; chunk_major:
    the StepBatches themselves, else a list of the fresh whole-group batches (the reference)."""
    p = g.p if rows is None else len(rows)
    gen = torch.Generator().manual_seed(round_)
    w, b = torch.randn(p, *g.layer_shape, generator=gen), torch.randn(p, g.layer_shape[0], generator=gen)
    opt = heads.OptimizerState.zeros(w, b, adam=False)
    batches = g._minibatches(round_, g.s.training.local_steps, rows)
    assert isinstance(batches, StepBatches) and isinstance(batches, heads.PeerSlicedBatches)
    if not chunk_major:
        batches = list(batches)
    loss = heads.local_steps(w, b, opt, batches, cfg, g.bias, chunked=True)
    return w, b, opt.m_w, opt.m_b, loss


@pytest.mark.parametrize("lr,momentum", [(1.0, 0.0), (1.0, 0.9), (0.3, 0.0), (0.3, 0.5)])
def test_chunk_major_steps_equal_whole_group_steps(small_scenario, monkeypatch, lr, momentum):
    monkeypatch.setattr(heads, "_kept", heads.KeptBuffers())
    gathered = _group(small_scenario, **{"training.batch_size": 5})
    other = _group(small_scenario, **{"training.batch_size": 3, "training.local_steps": 2})  # other buffer shapes
    padded = _group(small_scenario, **{"peers.count": 200, "training.batch_size": 32})
    assert gathered.padded is None and other.padded is None and padded.padded is not None
    cfg = TrainingCfg(lr=lr, momentum=momentum)
    row_bytes = StepBatches(gathered, gathered._draw(0, np.arange(1)[:, None, None]), None).row_bytes()
    # chunks of 3 peers of the gathered group's 4 (a last partial chunk); the padded group's heads
    # (10 x 64 floats) in chunks of 6
    monkeypatch.setattr(heads, "TRAIN_CHUNK_BYTES", max(3 * row_bytes, 6 * 10 * 64 * 4))
    seen = []
    for round_ in (1, 2):  # the kept buffer filled by other groups and shapes between the calls
        for g in (gathered, other, padded, gathered):
            for rows in (None, np.asarray([0, 2, 3])):
                got = _steps(g, cfg, round_, rows, chunk_major=True)
                want = _steps(g, cfg, round_, rows, chunk_major=False)
                assert all(torch.equal(u, v) for u, v in zip(got, want, strict=True))
                seen.append(got[0])
    assert not torch.equal(seen[0], seen[-2])  # different rounds, different heads
    # the gathered rows went through the kept buffer
    assert set(k[0] for k in heads.kept_buffers()) == {"grad", "batch"}


def test_chunk_major_parts_are_the_whole_group_batch_rows(small_scenario):
    g = _group(small_scenario, **{"training.batch_size": 5})
    sb = g._minibatches(3, g.s.training.local_steps)
    whole = list(sb)
    for step in range(sb.steps):
        for lo, hi in ((0, 2), (2, g.p)):
            part = [t.clone() for t in sb.part(step, lo, hi)]
            assert all(torch.equal(u, v[lo:hi]) for u, v in zip(part, whole[step], strict=True))


@pytest.mark.parametrize("lr", [1.0, 0.3])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_step_is_the_update_spelled_out(lr, momentum):
    """heads.step's SGD (lr 1 skips its exact multiplication): w − lr·(momentum·m + g), bit for bit."""
    gen = torch.Generator().manual_seed(0)
    w, b, gw, gb = (torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, generator=gen),
                    torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, generator=gen))
    st = heads.OptimizerState(torch.randn(4, 3, 5, generator=gen), torch.randn(4, 3, generator=gen))
    mw, mb = (st.m_w * momentum + gw, st.m_b * momentum + gb) if momentum else (gw, gb)
    want_w, want_b, want_mw = w - mw * lr, b - mb * lr, mw.clone() if momentum else st.m_w.clone()
    heads.step(w, b, gw.clone(), gb.clone(), st, optimizer="sgd", lr=lr, momentum=momentum, weight_decay=0.0,
               bias=True)
    assert torch.equal(w, want_w) and torch.equal(b, want_b) and torch.equal(st.m_w, want_mw)
