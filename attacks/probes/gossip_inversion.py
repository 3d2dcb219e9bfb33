"""Reconstructing a non-neighbour's model from the gossip messages a passive peer observes.

The setting of Pasquini, Raynal and Troncoso, "On the (In)security of Peer-to-Peer Decentralized
Machine Learning" (IEEE S&P 2023): in decentralized SGD with gossip averaging a passive,
honest-behaving attacker that knows the topology and the (linear) mixing rule can write every
message it receives as a known linear combination of the peers' local updates and solve the
resulting linear system over the rounds it observes. The "knowledge matrix" form (one row per
observed message, one column per unknown update) is the one of the authors' follow-up line of
work on gossip averaging (El Mrini, Cyffers and Bellet, ICML 2024, code
``AbdellahElmrini/decAttack``, ``ReconstructOptim.build_knowledge_matrix_dec``).

Dynamics (round ``t = 0, 1, ...``; heads start at ``X^0 = 0``, fedsim's initialisation)::

    Θ^t = X^t + U^t          every peer trains locally from X^t (U^t: its local update)
    X^{t+1} = W_t Θ^t        every peer averages the messages Θ^t it hears (W_t row-stochastic)

so ``Θ^t = Σ_{s≤t} W_{t-1} ⋯ W_s U^s``: with ``R_t`` the ``[n, K]`` map from the unknowns to
``Θ^t`` (``R_0`` selects round 0's block, ``R_t = W_{t-1} R_{t-1} + E_t``), an observed message
``Θ_j^t`` is the row ``R_t[j]`` times the unknowns and the target's head ``Θ_k^τ`` is ``R_τ[k]``.
The attacker's estimate is ``c A⁺ Y``: a fixed linear combination of the messages ``Y`` it holds
(``A``: the stacked observed rows; ``A⁺``: the pseudo-inverse, so among the updates that explain
the messages exactly it takes the least-norm ones). The estimate is exact whenever the model is
right and ``c`` lies in ``A``'s row space (:attr:`Reconstruction.identifiable`).

Unknown models (``updates``; every choice beyond the paper's system is a named departure):

* ``per_round`` — one unknown update per peer per round (the system as the paper writes it);
  usually underdetermined, the least-norm solution is then our choice.
* ``common`` — departure: ``U_j^t = m^t + δ_j^t`` with a free round mean ``m^t`` (its columns
  scaled by ``common_scale`` so the least-norm solution leaves it essentially unpenalised) and
  least-norm deviations: the federation's shared drift is explained first.
* ``constant`` — departure (El Mrini et al.'s simplification): each peer's update is the same in
  every round, ``n`` unknowns; exact for gossip averaging with constant inputs, a bias otherwise.
* ``drifting`` — departure (El Mrini et al.'s D-GD model, their GLS estimator's: a constant update
  per peer plus a fresh deviation every round): ``U_j^t = u_j + δ_j^t`` with ``u_j`` free (columns
  scaled by ``common_scale``) and least-norm deviations ``δ`` (their noise, i.i.d. across peers and
  rounds: the least-norm solution is then their GLS estimate in the noiseless limit).

Pure torch (float64); never imports ``fedsim``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from attacks.probes._head import head_logits
from attacks.probes.retrain_gap import kl_and_disagreement

UPDATE_MODELS = ("per_round", "common", "constant", "drifting")


def fedavg_mixing(in_neighbors: Sequence[np.ndarray], include_own: bool = True) -> Tensor:
    """The row-stochastic ``W [n, n]`` of fedsim's ``fedavg`` rule on one round's graph: peer ``i``
    averages its own message (``include_own``) and those of its in-neighbours, equal weights."""
    n = len(in_neighbors)
    w = torch.zeros(n, n, dtype=torch.float64)
    for i, nb in enumerate(in_neighbors):
        senders = [int(j) for j in nb if int(j) != i] + ([i] if include_own else [])
        if not senders:
            raise ValueError(f"peer {i} hears nobody and does not keep its own model: no mixing row")
        w[i, senders] = 1.0 / len(senders)
    return w


def unknowns(n: int, rounds: int, updates: str) -> int:
    """Number of unknown update vectors ``K`` of an ``updates`` model over ``rounds`` rounds."""
    if updates not in UPDATE_MODELS:
        raise ValueError(f"updates must be one of {', '.join(UPDATE_MODELS)}, got {updates!r}")
    return {"per_round": n * rounds, "common": (n + 1) * rounds, "constant": n, "drifting": n * (rounds + 1)}[updates]


def propagation(mixing: Sequence[Tensor], rounds: int, updates: str = "per_round",
                common_scale: float = 1e3) -> list[Tensor]:
    """``[R_0, …, R_{rounds-1}]``, each ``[n, K]``: ``Θ^t = R_t z`` for the unknowns ``z``.

    ``mixing[t]`` is ``W_t``, the averaging after round ``t`` (only ``W_0 … W_{rounds-2}`` are used).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if len(mixing) < rounds - 1:
        raise ValueError(f"{rounds} rounds need {rounds - 1} mixing matrices, got {len(mixing)}")
    n = mixing[0].shape[0] if len(mixing) else None
    if n is None:
        raise ValueError("give at least one mixing matrix (it fixes the number of peers)")
    k = unknowns(n, rounds, updates)
    eye = torch.eye(n, dtype=torch.float64)
    out: list[Tensor] = []
    r = torch.zeros(n, k, dtype=torch.float64)
    for t in range(rounds):
        if t > 0:
            r = mixing[t - 1].to(torch.float64) @ r
        if updates == "constant":
            r = r + eye
        elif updates == "per_round":
            r[:, t * n : (t + 1) * n] += eye
        elif updates == "drifting":  # [u_0 … u_{n-1} | δ^0 … δ^{T-1}]
            r[:, :n] += common_scale * eye
            r[:, n + t * n : n + (t + 1) * n] += eye
        else:  # common: [m^0 … m^{T-1} | δ^0 … δ^{T-1}]
            r[:, t] += common_scale
            r[:, rounds + t * n : rounds + (t + 1) * n] += eye
        out.append(r.clone())
    return out


@dataclass(frozen=True)
class Reconstruction:
    """Estimated heads of one or more targets and how well the system pins each down."""

    estimate: Tensor  # [P], or [k, P] for k target rows
    coefficients: Tensor  # [m] / [k, m]: the estimate is coefficients @ messages
    identifiable: Tensor  # ‖c − c A⁺ A‖ / ‖c‖ per target: 0 when c is in A's row space (exact if the model holds)


def reconstruct(rows: Sequence[Tensor], observed: Sequence[Sequence[int]], messages: Sequence[Tensor],
                target_row: Tensor, rcond: float = 1e-10) -> Reconstruction:
    """Least-norm reconstruction of ``target_row @ z`` from the observed messages.

    ``rows[t]``: :func:`propagation`'s ``R_t``; ``observed[t]``: the peers whose round-``t``
    messages the attacker holds (its in-neighbours and itself); ``messages[t]``: those messages
    ``[len(observed[t]), P]`` in the same order; ``target_row``: the quantity wanted, ``[K]`` or
    ``[k, K]`` for several at once (e.g. ``R_τ[k]`` for peer ``k``'s round-``τ`` head). ``rcond``:
    singular values below ``rcond`` times the largest are treated as zero (the pseudo-inverse's
    cut-off).
    """
    if not (len(rows) == len(observed) == len(messages)):
        raise ValueError(f"rows, observed and messages must cover the same rounds, got "
                         f"{len(rows)}, {len(observed)}, {len(messages)}")
    a_parts, y_parts = [], []
    for t, (r, obs, msg) in enumerate(zip(rows, observed, messages, strict=True)):
        idx = torch.as_tensor(list(obs), dtype=torch.long)
        if msg.shape[0] != idx.numel():
            raise ValueError(f"round {t}: {idx.numel()} observed peers but {msg.shape[0]} messages")
        a_parts.append(r[idx])
        y_parts.append(msg.to(torch.float64))
    a = torch.cat(a_parts)
    y = torch.cat(y_parts)
    c = target_row.to(torch.float64)
    pinv = torch.linalg.pinv(a, rtol=rcond)  # [K, m]
    g = c @ pinv  # [m] / [k, m]
    resid = c - g @ a
    ident = resid.norm(dim=-1) / c.norm(dim=-1).clamp_min(1e-300)
    return Reconstruction(estimate=g @ y, coefficients=g, identifiable=ident)


def head_distance(reference: Tensor, estimate: Tensor, x: Tensor, layer_shape: tuple[int, int],
                  bias: bool) -> dict[str, float]:
    """Parameter- and function-space distance of ``estimate`` to ``reference`` (flat heads):
    ``rel_error`` ‖θ̂ − θ‖/‖θ‖, ``agreement`` (top-1 on ``x``) and ``kl`` (mean KL(p_θ ‖ p_θ̂) on ``x``)."""
    ref, est = reference.to(torch.float64), estimate.to(torch.float64)
    kl, dis = kl_and_disagreement(ref, est, x, layer_shape, bias)
    rel = float((est - ref).norm() / ref.norm().clamp_min(1e-300))
    return {"rel_error": rel, "agreement": 1.0 - dis, "kl": kl}


@dataclass(frozen=True)
class HeadSet:
    """Heads ``[k, P]`` with their log-probabilities on fixed features (computed once, compared often)."""

    params: Tensor  # [k, P] float64
    logp: Tensor  # [k, m, C]

    @classmethod
    def of(cls, params: Tensor, x: Tensor, layer_shape: tuple[int, int], bias: bool) -> HeadSet:
        p = params.to(torch.float64).reshape(-1, params.shape[-1])
        return cls(p, torch.log_softmax(head_logits(p, x.to(torch.float64), layer_shape, bias), -1))

    def __getitem__(self, idx: Tensor | list[int] | slice) -> HeadSet:
        return HeadSet(self.params[idx], self.logp[idx])


def head_distances(reference: HeadSet, estimate: HeadSet) -> dict[str, Tensor]:
    """:func:`head_distance` row by row (broadcast: ``[k]`` vs ``[k]`` or ``[1]``), as ``[k]`` tensors;
    the same numbers as :func:`attacks.probes.retrain_gap.kl_and_disagreement` (tested)."""
    lr_, lp = reference.logp, estimate.logp
    kl = (lr_.exp() * (lr_ - lp)).sum(-1).mean(-1)
    agree = (lr_.argmax(-1) == lp.argmax(-1)).to(torch.float64).mean(-1)
    rel = (estimate.params - reference.params).norm(dim=-1) / reference.params.norm(dim=-1).clamp_min(1e-300)
    return {"rel_error": rel, "agreement": agree, "kl": kl}
