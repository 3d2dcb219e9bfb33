"""Gossip rollback (attacks/probes/rollback.py): exact where the theory says it is.

A gossip federation whose peers minimise quadratic losses by heavy-ball SGD (affine local training,
so the linearised Jacobian is exact): rolling back every round must give the federation run without
the leaver, to rounding. Mutants that this catches (tried by hand): the identity Jacobian
(``jacobian=None``), momentum buffers not carried between rounds, the leaver's messages kept.
Partial replay (``replaying``) against a federation in which only those peers re-run without the
leaver and the others re-send what they recorded; mutants caught (tried by hand): ``replaying``
ignored (everyone replays), a replaying peer averaging only its replaying in-neighbours (the
others' recorded messages dropped), every peer keeping the leaver's messages.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from attacks.probes.rollback import gossip_rollback, heavy_ball_jacobian

N, P, T, LR, BETA, STEPS, WD = 6, 5, 8, 0.1, 0.9, 3, 0.01
LEAVER = 2


def _federation() -> tuple[list[Tensor], list[Tensor], list[list[list[int]]]]:
    g = torch.Generator().manual_seed(0)
    hess, targets = [], []
    for _ in range(N):
        a = torch.randn(P, P, generator=g, dtype=torch.float64)
        hess.append(a @ a.T / P + 0.1 * torch.eye(P, dtype=torch.float64))
        targets.append(3 * torch.randn(P, generator=g, dtype=torch.float64))
    ring = [[(k - 1) % N, (k + 1) % N, (k + 2) % N] for k in range(N)]
    heard = [ring for _ in range(T)]
    return hess, targets, heard


def _run(hess, targets, heard, absent: int | None):
    theta = torch.zeros(N, P, dtype=torch.float64)
    buf = torch.zeros(N, P, dtype=torch.float64)
    messages = []
    for t in range(T):
        for i in range(N):
            for _ in range(STEPS):
                grad = hess[i] @ (theta[i] - targets[i]) + WD * theta[i]
                buf[i] = BETA * buf[i] + grad
                theta[i] = theta[i] - LR * buf[i]
        messages.append(theta.clone())
        new = theta.clone()
        for k in range(N):
            s = [k, *heard[t][k]]
            if absent is not None:
                s = [i for i in s if i != absent]
            new[k] = theta[s].mean(0)
        theta = new
    return theta, messages


def _jac(hess):
    return lambda i, t, d, b: heavy_ball_jacobian(lambda v: hess[i] @ v, LR, BETA, STEPS, WD)(d, b)


def test_full_rollback_equals_the_run_without_the_leaver():
    hess, targets, heard = _federation()
    final, messages = _run(hess, targets, heard, None)
    without, _ = _run(hess, targets, heard, LEAVER)
    out = gossip_rollback(final, messages, heard, LEAVER, _jac(hess))
    others = [k for k in range(N) if k != LEAVER]
    gap = float((final[others] - without[others]).norm())
    assert gap > 1.0  # the leaver mattered
    torch.testing.assert_close(out[others], without[others], rtol=0, atol=1e-9 * gap)
    torch.testing.assert_close(out[LEAVER], final[LEAVER])
    # the identity Jacobian (no local training between averages) is not exact here
    wrong = gossip_rollback(final, messages, heard, LEAVER, None)
    assert float((wrong[others] - without[others]).norm()) > 1e-3 * gap


def test_last_round_rollback_is_the_average_without_the_leaver():
    hess, targets, heard = _federation()
    final, messages = _run(hess, targets, heard, None)
    out = gossip_rollback(final, messages[-1:], heard[-1:], LEAVER)
    for k in range(N):
        s = [k, *heard[-1][k]]
        want = messages[-1][[i for i in s if i != LEAVER]].mean(0) if k != LEAVER else final[k]
        torch.testing.assert_close(out[k], want)


def _run_partial(hess, targets, heard, recorded, leaver: int, replaying: set[int]):
    """Only ``replaying`` re-run without ``leaver`` (heavy ball from the same start, their momentum
    kept); every other peer's heads and messages are the recorded ones (``recorded``: per round)."""
    theta = torch.zeros(N, P, dtype=torch.float64)
    buf = torch.zeros(N, P, dtype=torch.float64)
    for t in range(T):
        sent = recorded[t].clone()
        for i in replaying:
            for _ in range(STEPS):
                grad = hess[i] @ (theta[i] - targets[i]) + WD * theta[i]
                buf[i] = BETA * buf[i] + grad
                theta[i] = theta[i] - LR * buf[i]
            sent[i] = theta[i]
        for k in replaying:
            theta[k] = sent[[i for i in [k, *heard[t][k]] if i != leaver]].mean(0)
    return theta


@pytest.mark.parametrize("replaying", [{1, 3}, {0, 1, 3, 4}, {0, 4}])
def test_partial_replay_keeps_the_others_recorded_messages(replaying: set[int]):
    hess, targets, heard = _federation()
    final, messages = _run(hess, targets, heard, None)
    want = _run_partial(hess, targets, heard, messages, LEAVER, replaying)
    out = gossip_rollback(final, messages, heard, LEAVER, _jac(hess), replaying=replaying)
    rest = [k for k in range(N) if k not in replaying]
    torch.testing.assert_close(out[rest], final[rest], rtol=0, atol=0)
    rows = sorted(replaying)
    gap = float((final[rows] - want[rows]).norm())
    assert gap > 0.1  # the replay mattered
    torch.testing.assert_close(out[rows], want[rows], rtol=0, atol=1e-9 * gap)
    # every peer replaying is the full rollback (the default)
    full = gossip_rollback(final, messages, heard, LEAVER, _jac(hess))
    torch.testing.assert_close(gossip_rollback(final, messages, heard, LEAVER, _jac(hess), replaying=range(N)), full)


def test_bad_input():
    hess, targets, heard = _federation()
    final, messages = _run(hess, targets, heard, None)
    with pytest.raises(ValueError, match="differ in length"):
        gossip_rollback(final, messages, heard[:-1], LEAVER)
    with pytest.raises(ValueError, match="not a peer id"):
        gossip_rollback(final, messages, heard, N)
    with pytest.raises(ValueError, match="names a peer outside"):
        gossip_rollback(final, messages, heard, LEAVER, replaying=[0, N])
