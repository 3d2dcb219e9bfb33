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

Colluders and the GLS estimator (El Mrini, Cyffers and Bellet, "Privacy Attacks in Decentralized
Learning", ICML 2024, ``AbdellahElmrini/decAttack``, ``src/optim.py``: ``build_knowledge_matrix_dec``,
``reconstruct_LS_target_only``, ``build_cov_target_only``, ``reconstruct_GLS_target_only``):

* :func:`coalition_reconstruct` pools a coalition's observations into one system: every message any
  colluder receives is an observed row, and the colluders' own sent messages are *known inputs*
  (``own="known"``, their code: the attackers' sent values ``X_A`` enter the targets' dynamics
  through ``W_TA`` and are subtracted, ``B_t = W_TT B_{t-1} + W_TA X_A^{t-1}``; here
  :func:`known_offsets`, with the colluders' unknown columns zeroed by :func:`propagation`'s
  ``known``). ``own="modelled"`` (departure, what this probe did before colluders existed): the
  colluders' updates are unknowns of the same ``updates`` model and their messages observed rows.
* ``estimator="gls"``: generalised least squares with the noise covariance of their D-GD model —
  every non-colluder's per-round update deviates from the model by i.i.d. noise (variance ``σ²``
  per coordinate, same for every peer and round; ``σ`` cancels), propagated by the gossip into
  the observed messages: ``Σ = σ² A_δ A_δᵀ`` with ``A_δ`` the observed rows of the ``per_round``
  system (:func:`noise_covariance`). For a symmetric ``W`` this is their
  ``σ² Σ_{s≤t₁} (W_TT^{t₁+t₂−2s})[i, j]`` (tested); ``A_δ A_δᵀ`` is the general form.
  Departure: a rank-deficient whitened system takes the least-norm GLS solution
  (``pinv``; theirs inverts ``Xᵀ Σ⁻¹ X`` and fails). With ``Σ = I`` it is the least-squares estimate.

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
ESTIMATORS = ("ls", "gls")
OWN_MODELS = ("known", "modelled")


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
                common_scale: float = 1e3, known: Sequence[int] = ()) -> list[Tensor]:
    """``[R_0, …, R_{rounds-1}]``, each ``[n, K]``: ``Θ^t = B_t + R_t z`` for the unknowns ``z``.

    ``mixing[t]`` is ``W_t``, the averaging after round ``t`` (only ``W_0 … W_{rounds-2}`` are used).
    ``known``: peers whose messages are known inputs (colluders): their rows are zero (their
    messages are :func:`known_offsets`' ``B_t``), so their unknown columns vanish too.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if len(mixing) < rounds - 1:
        raise ValueError(f"{rounds} rounds need {rounds - 1} mixing matrices, got {len(mixing)}")
    n = mixing[0].shape[0] if len(mixing) else None
    if n is None:
        raise ValueError("give at least one mixing matrix (it fixes the number of peers)")
    k = unknowns(n, rounds, updates)
    kn = torch.as_tensor(list(known), dtype=torch.long)
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
        if kn.numel():
            r[kn] = 0.0
        out.append(r.clone())
    return out


def known_offsets(mixing: Sequence[Tensor], known: Sequence[int], known_messages: Sequence[Tensor]) -> list[Tensor]:
    """``[B_0, …, B_{T-1}]``, each ``[n, P]``: the part of ``Θ^t`` the known peers' messages fix
    (``B_t[known] = M_t``, ``B_t[others] = (W_{t-1} B_{t-1})[others]``, ``B_0[others] = 0``);
    ``known_messages[t]``: the known peers' round-``t`` messages ``[len(known), P]``."""
    kn = torch.as_tensor(list(known), dtype=torch.long)
    if not len(known_messages) or known_messages[0].shape[0] != kn.numel():
        raise ValueError(f"give every round's messages of the {kn.numel()} known peers")
    n = mixing[0].shape[0]
    b = torch.zeros(n, known_messages[0].shape[1], dtype=torch.float64)
    out = []
    for t, m in enumerate(known_messages):
        if t > 0:
            b = mixing[t - 1].to(torch.float64) @ b
        b[kn] = m.to(torch.float64)
        out.append(b.clone())
    return out


def noise_covariance(delta_rows: Sequence[Tensor], observed: Sequence[Sequence[int]]) -> Tensor:
    """``A_δ A_δᵀ`` (``σ² = 1``): the covariance of the observed messages' noise when every unknown
    peer's per-round update deviates from its model by i.i.d. unit noise, propagated by the gossip
    (El Mrini et al.'s ``build_cov_target_only``). ``delta_rows``: :func:`propagation`'s ``per_round``
    rows (with the same ``known``); ``observed[t]``: the peers whose round-``t`` messages are rows."""
    a = torch.cat([r[torch.as_tensor(list(obs), dtype=torch.long)]
                   for r, obs in zip(delta_rows, observed, strict=True)])
    return a @ a.T


@dataclass(frozen=True)
class Reconstruction:
    """Estimated heads of one or more targets and how well the system pins each down."""

    estimate: Tensor  # [P], or [k, P] for k target rows
    coefficients: Tensor  # [m] / [k, m]: the estimate is coefficients @ messages
    identifiable: Tensor  # ‖c − c A⁺ A‖ / ‖c‖ per target: 0 when c is in A's row space (exact if the model holds)
    deficiency: int = 0  # unknowns the dynamics use (non-zero columns of the R_t) minus rank(A): 0 = all pinned down


def reconstruct(rows: Sequence[Tensor], observed: Sequence[Sequence[int]], messages: Sequence[Tensor],
                target_row: Tensor, rcond: float = 1e-10, cov: Tensor | None = None) -> Reconstruction:
    """Least-norm (``cov`` None: least squares) or generalised-least-squares reconstruction of
    ``target_row @ z`` from the observed messages.

    ``rows[t]``: :func:`propagation`'s ``R_t``; ``observed[t]``: the peers whose round-``t``
    messages the attacker holds (its in-neighbours and itself); ``messages[t]``: those messages
    ``[len(observed[t]), P]`` in the same order; ``target_row``: the quantity wanted, ``[K]`` or
    ``[k, K]`` for several at once (e.g. ``R_τ[k]`` for peer ``k``'s round-``τ`` head). ``rcond``:
    singular values below ``rcond`` times the largest are treated as zero (the pseudo-inverse's
    cut-off). ``cov``: the messages' noise covariance ``[m, m]`` (rows in the stacked order; e.g.
    :func:`noise_covariance`): the system is whitened by its Cholesky factor ``L`` (``L⁻¹ A z = L⁻¹ Y``)
    before the least-norm solve, so the coefficients are ``c (L⁻¹A)⁺ L⁻¹``; ``cov = I`` is least squares.
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
    aw = a
    chol = None
    if cov is not None:
        if cov.shape != (a.shape[0], a.shape[0]):
            raise ValueError(f"cov must be [{a.shape[0]}, {a.shape[0]}] (one row per observed message), "
                             f"got {list(cov.shape)}")
        chol, info = torch.linalg.cholesky_ex(cov.to(torch.float64))
        if int(info) != 0:
            raise ValueError("the noise covariance is not positive definite (an observed message counted twice?)")
        aw = torch.linalg.solve_triangular(chol, a, upper=False)  # L⁻¹ A
    gw = c @ torch.linalg.pinv(aw, rtol=rcond)  # [m] / [k, m]: coefficients on the whitened messages
    g = gw if chol is None else torch.linalg.solve_triangular(chol.T, gw.reshape(-1, gw.shape[-1]).T,
                                                                upper=True).T.reshape(gw.shape)  # gw L⁻¹
    resid = c - g @ a
    ident = resid.norm(dim=-1) / c.norm(dim=-1).clamp_min(1e-300)
    active = torch.stack([r.abs().sum(0) for r in rows]).sum(0) > 0
    deficiency = int(active.sum()) - int(torch.linalg.matrix_rank(a[:, active], rtol=rcond)) if a.numel() else 0
    return Reconstruction(estimate=g @ y, coefficients=g, identifiable=ident, deficiency=deficiency)


def coalition_heard(in_neighbors: Sequence[Sequence[Sequence[int]]], colluders: Sequence[int]) -> list[list[int]]:
    """Per round, every non-colluder some colluder hears (``in_neighbors[t][a]``: who ``a`` hears in round ``t``)."""
    col = {int(a) for a in colluders}
    return [sorted({int(j) for a in col for j in nb[a]} - col) for nb in in_neighbors]


def coalition_reconstruct(mixing: Sequence[Tensor], messages: Sequence[Tensor], colluders: Sequence[int],
                          in_neighbors: Sequence[Sequence[Sequence[int]]], target: Tensor, updates: str = "per_round",
                          common_scale: float = 1e3, estimator: str = "ls", own: str = "known",
                          rcond: float = 1e-10) -> Reconstruction:
    """A coalition's estimate of ``target @ Θ^{τ-1}`` (``target [k, n]``: one-hot rows for peers'
    round-``τ−1`` messages, ``W_{τ-1}`` rows for their heads after the last averaging), ``τ =
    len(in_neighbors)`` (rounds ``0 .. τ-1`` observed).

    ``messages[t]``: round ``t``'s messages ``[n, P]`` of which only the colluders' rows and those of
    the peers some colluder hears in round ``t`` (:func:`coalition_heard`) are read: all colluders'
    observations go into one system (module docstring: ``own``, ``estimator``).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if own not in OWN_MODELS:
        raise ValueError(f"own must be one of {', '.join(OWN_MODELS)}, got {own!r}")
    tau = len(in_neighbors)
    col = sorted({int(a) for a in colluders})
    if not col:
        raise ValueError("a coalition needs at least one colluder")
    heard = coalition_heard(in_neighbors, col)
    known = col if own == "known" else []
    if known:
        obs = heard
        offsets = known_offsets(mixing, known, [messages[t][known] for t in range(tau)])
    else:
        obs = [sorted({int(j) for j in h} | set(col)) for h in heard]
        offsets = [torch.zeros_like(messages[t], dtype=torch.float64) for t in range(tau)]
    rows = propagation(mixing, tau, updates, common_scale, known=known)
    ys = [messages[t][obs[t]].to(torch.float64) - offsets[t][obs[t]] for t in range(tau)]
    cov = None
    if estimator == "gls":
        cov = noise_covariance(propagation(mixing, tau, "per_round", known=known), obs)
    tgt = target.to(torch.float64)
    rec = reconstruct(rows, obs, ys, tgt @ rows[tau - 1], rcond, cov)
    return Reconstruction(estimate=rec.estimate + tgt @ offsets[tau - 1], coefficients=rec.coefficients,
                          identifiable=rec.identifiable, deficiency=rec.deficiency)


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
