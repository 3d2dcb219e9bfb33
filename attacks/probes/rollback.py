"""Gossip rollback: remove a leaver from a gossip federation by replaying the last rounds' averages
without its messages (issue 17; a decentralised, linearised FedEraser).

FedEraser (G. Liu, X. Ma, Y. Yang, C. Wang, J. Liu, "FedEraser: Enabling Efficient Client-Level
Data Removal from Federated Learning Models", IWQoS 2021) has the *server* keep every client's
updates and rebuild the global model without the leaver's, calibrating the other clients' stored
updates by a few local steps. In a gossip federation there is no server: every peer averages what
its in-neighbours sent, so a leaver's data reaches a peer through the averages it took part in,
most of it through the last rounds' messages at the leaver's direct neighbours (docs/probes.md,
"Why Newton closes only part of the gap"). Here each peer keeps the messages it received in the
last ``K`` rounds (the engine records them, :class:`fedsim.simulation.Simulation`), and the
federation re-runs those ``K`` averages without the leaver's messages, propagating the change
through the peers' local training *linearised* around what they actually sent.

Let ``m_i^t`` be peer ``i``'s message in round ``t`` (its head after local training),
``S_k^t = {k} ∪ N_k^t`` the heads peer ``k`` averaged in round ``t`` (uniform mean, fedavg's
``include_own``), ``S'_k^t = S_k^t \\ {L}`` without the leaver ``L``. The counterfactual heads
``θ'_k = θ_k + δ_k`` follow, from ``δ = 0`` at the start of round ``T − K``:

    local training (linearised):  δ̃_i^t = J_i^t δ_i^{t−1}
    averaging without L:          δ_k^t = mean_{i ∈ S'_k^t} (m_i^t + δ̃_i^t) − mean_{i ∈ S_k^t} m_i^t

``J_i^t`` is the Jacobian of peer ``i``'s local training in round ``t`` with respect to the head it
started from. For the engine's SGD with heavy-ball momentum (PyTorch's convention: ``b ← βb + g +
wd·θ``, ``θ ← θ − ηb``; the buffer ``b`` is per peer and survives the averaging) the linearised
state is ``(δθ, δb)`` and each of the ``s`` local steps is ``δb ← β δb + H δθ + wd δθ``,
``δθ ← δθ − η δb`` (:func:`heavy_ball_jacobian`), with ``H`` the Hessian of the peer's mean loss.
Departures (ours): ``H`` is the Hessian of the peer's *whole shard* at its *message* ``m_i^t``
(the engine's steps use minibatches at the intermediate heads); the leaver's messages are simply
dropped (its neighbours then average ``|S'|`` heads instead of ``|S|``, what the retrained
federation does); only a uniform mean (fedavg) is linear, so only it is supported.

Partial replay (``replaying``, the federated-unlearning probe's hop arms): only the peers of a set
``A`` replay; the others keep what they recorded (``δ_k = 0``: their heads and the messages they
send are the recorded ones, the leaver's contribution included), and a replaying peer averages
its replaying in-neighbours' counterfactual messages with the others' recorded ones. ``A`` = every
peer is the full rollback above.

Exactness: with ``K`` = every round and local training that is affine in the starting head
(``J`` exact) the rollback *is* the run without the leaver (``tests/test_rollback.py``). In the
flat directions only the leaver's data excites (planted canaries), local training leaves ``δ``
untouched and the rollback removes what ``K`` rounds of averaging brought; in the curved ones the
Jacobian contracts ``δ`` as training does.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import Tensor

# (peer, index of the round in the window, δθ, δb) → (δθ, δb) after that peer's local training
LocalJacobian = Callable[[int, int, Tensor, Tensor], tuple[Tensor, Tensor]]


def heavy_ball_jacobian(hv: Callable[[Tensor], Tensor], lr: float, momentum: float, steps: int,
                        weight_decay: float = 0.0) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(δθ, δb) ↦`` their image under ``steps`` linearised heavy-ball steps with Hessian ``hv``
    (formula in the module docstring; ``momentum = 0``: plain gradient descent, ``δb`` unused)."""
    def apply(d: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        for _ in range(steps):
            g = hv(d) + weight_decay * d
            b = momentum * b + g if momentum else g
            d = d - lr * b
        return d, b

    return apply


def gossip_rollback(final: Tensor, messages: Sequence[Tensor], heard: Sequence[Sequence[Sequence[int]]],
                    leaver: int, jacobian: LocalJacobian | None = None,
                    replaying: Collection[int] | None = None) -> Tensor:
    """The heads ``[N, P]`` of a fedavg gossip federation had ``leaver``'s messages not arrived in
    the last ``K = len(messages)`` rounds (module docstring).

    Args:
        final: the heads after the last round ``[N, P]`` (the averages of ``messages[-1]``).
        messages: the messages ``[N, P]`` of rounds ``T − K .. T − 1`` (heads after local training).
        heard: per round, per peer, the in-neighbours whose messages it averaged with its own.
        leaver: the peer whose messages are removed (its own row is returned unchanged).
        jacobian: linearised local training (:data:`LocalJacobian`); ``None``: the identity (no
            local training between the averages).
        replaying: the peers that replay (module docstring, "partial replay"); the others' rows
            come back as in ``final``; ``None``: every peer.
    """
    if len(messages) != len(heard):
        raise ValueError(f"messages ({len(messages)} rounds) and heard ({len(heard)}) differ in length")
    n = final.shape[0]
    if not 0 <= leaver < n:
        raise ValueError(f"leaver {leaver} is not a peer id in 0..{n - 1}")
    if replaying is not None and any(not 0 <= int(k) < n for k in replaying):
        raise ValueError(f"replaying {sorted(replaying)} names a peer outside 0..{n - 1}")
    chosen = None if replaying is None else {int(k) for k in replaying}
    replays = [k for k in range(n) if k != leaver and (chosen is None or k in chosen)]
    delta = torch.zeros_like(final, dtype=torch.float64)
    buf = torch.zeros_like(delta)
    for t, (m, nb) in enumerate(zip(messages, heard, strict=True)):
        m = m.to(torch.float64)
        if len(nb) != n or m.shape != final.shape:
            raise ValueError(f"round {t} of the window: messages {tuple(m.shape)} / heard {len(nb)} do not match "
                             f"the heads {tuple(final.shape)}")
        moved = delta.clone()
        if jacobian is not None and t > 0:
            for i in range(n):
                if bool(delta[i].any()) or bool(buf[i].any()):
                    moved[i], buf[i] = jacobian(i, t, delta[i], buf[i])
        new = torch.zeros_like(delta)
        for k in replays:
            s = [k, *(int(i) for i in nb[k])]
            if leaver not in s:
                new[k] = moved[s].mean(0)
                continue
            kept = [i for i in s if i != leaver]
            new[k] = (m[kept] + moved[kept]).mean(0) - m[s].mean(0)
        delta = new
    return final.to(torch.float64) + delta
