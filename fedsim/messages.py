"""The messages of a round: every peer's vector with the Byzantine rows forged
(:func:`forge_messages`; what receivers accept of a forger's output: :func:`forged_rows`), the
stale attack's bounded history (:func:`stale_step`) and the class sets peers announce when they
connect (:func:`claimed_classes`). Used alike by the peer groups (:class:`fedsim.peers.PeerGroup`),
the federated server (:class:`fedsim.server.Server`) and the Flower client; randomness is keyed by
(round, peer, receiver), so every caller computes the same forgeries.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import attacks
from fedsim import rng as crng
from fedsim.group_setup import GroupSetup
from fedsim.runfacts import sends_forgeries


def forge_messages(
    attack: Any,
    s: GroupSetup,
    round_: int,
    params: Tensor,
    history: Tensor | None,
    receiver: int | None = None,
    nbr_honest: Tensor | None = None,
    sampled: np.ndarray | None = None,
    server_own: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The messages every peer sends this round ``[N, P]``, a validity mask ``[N]``, and the
    Byzantine peers' history after this round (:func:`stale_step`: kept only for a forger with
    ``lookback > 0``, the stale-model attack, which gets its oldest entry as ``ctx.previous``;
    a per-receiver call reads ``history`` and returns it unchanged).

    Byzantine rows are replaced by the forger's output. Forgers see the honest vectors of the
    round when ``peers.attack.omniscient`` (default), otherwise the Byzantine peers' own
    benign-trained vectors. A silent (None), non-finite or wrong-shape forgery is marked
    invalid: receivers drop it and count it. Randomness is keyed by (round, peer, receiver), so
    every actor computes the same forgeries.

    ``sampled`` (bool ``[N]``, federated client sampling): the clients of this round. The others'
    rows are marked invalid (their messages never arrive); the Byzantine coalition still forges
    every Byzantine row (stateful attacks keep their shapes), but an omniscient forger sees only
    the sampled honest clients' vectors (what was sent this round; all its own if none was).

    A per-receiver forger (dissensus) forges only for a given receiver: ``receiver`` (a peer,
    with ``nbr_honest`` its honest neighbours' vectors) or, in federated mode, the server
    (``server_own``, the global model); without either nothing is forged here — the gossip
    aggregation calls this again for each receiver."""
    valid = torch.ones(params.shape[0], dtype=torch.bool)
    if s.absent is not None:
        valid[torch.tensor(s.absent)] = False
    if sampled is not None:  # applied again after forging, which re-validates the Byzantine rows
        valid &= torch.from_numpy(sampled)
    byz = torch.from_numpy(np.flatnonzero(s.byzantine))
    if not sends_forgeries(attack, s.byzantine):
        return params, valid, history  # nothing forged: no [N, P] copy
    own = params[byz]
    previous, new_history = stale_step(history, own, attack.lookback)
    if receiver is not None:
        new_history = history  # the broadcast call of this round moved it on
    if attack.per_receiver and receiver is None and server_own is None:
        return params, valid, new_history  # forged per receiver (PeerGroup.aggregate)
    msgs = params.clone()
    seen = ~s.byzantine if sampled is None else ~s.byzantine & sampled
    view = params[torch.from_numpy(seen)] if s.attack.omniscient and seen.any() else own
    layer_shape = (s.num_classes, s.dim)
    ctx_kw: dict[str, Any] = dict(
        n=s.received,
        f=len(byz),
        f_received=s.f,
        round=round_,
        layer_shape=layer_shape,
        bias=s.training.bias,
        num_classes=s.num_classes,
        previous=previous,
    )
    if receiver is not None:
        ctx_kw |= dict(receiver_own=params[receiver], receiver_neighbors=nbr_honest)
    elif server_own is not None and attack.per_receiver:
        ctx_kw |= dict(receiver_own=server_own)  # the server hears every client: honest = its neighbours
    groups = [np.arange(len(byz))] if s.attack.collude else [np.asarray([j]) for j in range(len(byz))]
    for g in groups:
        gen = crng.torch_generator(s.seed, "attack", round_, int(byz[g[0]]), -1 if receiver is None else receiver)
        out = attack.forge(view, own[g], attacks.AttackContext(generator=gen, **ctx_kw))
        rows = byz[g]
        sent, ok = forged_rows(out, len(rows), params.shape[1])
        valid[rows] = ok
        if sent is not None:
            msgs[rows] = sent.to(params.dtype)
    if sampled is not None:
        valid &= torch.from_numpy(sampled)
    return msgs, valid, new_history


def forged_rows(out: object, k: int, p: int) -> tuple[Tensor | None, Tensor]:
    """What receivers make of a forger's output for ``k`` Byzantine senders of ``p``-vectors:
    ``(rows, valid)``, ``rows`` the ``[k, p]`` tensor to send (None where ``out`` is None or not
    a ``[k, p]`` tensor: nothing arrives) and ``valid [k]`` the rows they accept (the finite ones)."""
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape != (k, p):
        return None, torch.zeros(k, dtype=torch.bool)
    return out, torch.isfinite(out).all(dim=1)


def stale_step(history: Tensor | None, own: Tensor, depth: int) -> tuple[Tensor | None, Tensor | None]:
    """One round of the Byzantine peers' bounded history ``[h, k, P]`` (oldest first, ``h <= depth``):
    ``(previous, history')`` where ``previous`` is ``own`` as held ``depth`` rounds ago (None while
    fewer than ``depth`` rounds are kept) and ``history'`` appends this round's ``own [k, P]`` and
    keeps the last ``depth``. ``depth = 0`` (a forger that does not look back): ``(None, None)``,
    nothing is copied."""
    if depth <= 0:
        return None, None
    if history is None:
        return None, own[None].clone()
    previous = history[0] if history.shape[0] == depth else None
    return previous, torch.cat([history, own[None]])[-depth:].clone()


def claimed_classes(classes: np.ndarray, byzantine: np.ndarray) -> np.ndarray:
    """The class sets peers announce in the private-set-intersection handshake: their own, except
    that every Byzantine peer claims all classes (so it is sent to, and scored on the classes of,
    every peer; in the authors' runs the attackers did hold every class)."""
    return classes | byzantine[:, None]
