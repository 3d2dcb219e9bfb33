"""Rules that judge each received vector against a trusted reference: a root-set update
(FLTrust), the own model's validation loss (MOZI/UBAR), or the own model's norm (BALANCE).

None of them mixes the own vector into a robust statistic; the own vector is the reference and
enters the result with the weight each paper gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fedlib.params import Options, Real, param
from strategies._math import (
    check_f,
    dists_to,
    f64,
    mean_cross_entropy,
    nearest,
    runtime_f,
    to_like,
    validation_logits,
)
from strategies.base import AggregationContext, Strategy, unflatten
from strategies.registry import register


@register("fltrust")
@dataclass
class FLTrust(Strategy):
    """FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021, Alg. 1 with server learning rate 1).

    With ``g0 = ctx.root_update − own`` (the update of ``own`` trained on the trusted root set)
    and ``Δ_i = x_i − own``:

    ``TS_i = ReLU(cos(Δ_i, g0))``, ``Δ'_i = Δ_i · ||g0|| / ||Δ_i||``,
    ``result = own + Σ_i TS_i Δ'_i / Σ_i TS_i``.

    The paper exchanges gradients/updates; the received vectors here are models, so ``Δ_i`` is
    the translation of the paper's local model update. A zero ``Δ_i``, a zero ``g0`` or
    ``Σ TS_i = 0`` contribute no trust (the result is ``own``). The own vector is the reference
    (the server's global model) and is not a candidate.

    The root set and ``root_update`` come from the engine, not from parameters: in federated
    mode the server's root set is 100 training samples drawn uniformly once (seeded), the
    paper's default root-dataset size, sampled from the training data as in its experiments
    (so it may overlap the clients' data); in decentralized mode each peer's root set is its own
    validation split. ``root_update`` is ``own`` after ``training.local_steps`` steps of the
    scenario's optimizer on mini-batches of ``training.batch_size`` drawn from that set (the
    paper: the server trains like a client, ``R_l`` local iterations).
    """
    exchanges = "full_model"  # what a message carries (byte accounting)
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    needs: ClassVar[frozenset[str]] = frozenset({"root_update"})

    def check(self, n: int, f: int) -> None:
        check_f(f)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        if ctx.root_update is None:
            raise ValueError("fltrust: needs ctx.root_update (own trained on the root data set)")
        o = f64(own)
        g0 = f64(ctx.root_update.to(own.device)) - o
        if g0.shape != o.shape or not bool(torch.isfinite(g0).all()):
            return own.clone()
        delta = f64(received) - o
        g0_norm = torch.linalg.vector_norm(g0)
        d_norm = torch.linalg.vector_norm(delta, dim=1)
        ok = (d_norm > 0) & (g0_norm > 0)
        safe = d_norm.clamp_min(torch.finfo(torch.float64).tiny)
        cos = (delta @ g0) / (safe * g0_norm.clamp_min(torch.finfo(torch.float64).tiny))
        ts = torch.where(ok, torch.relu(cos), torch.zeros_like(cos))
        if float(ts.sum()) <= 0:
            return own.clone()
        # rows without trust are zeroed before the product: ||g0|| / tiny may overflow to inf
        rescaled = delta * torch.where(ok, g0_norm / safe, torch.zeros_like(safe))[:, None]
        return to_like(o + (ts[:, None] * rescaled).sum(dim=0) / ts.sum(), own)


@register("mozi")
@dataclass
class Mozi(Strategy):
    """MOZI / UBAR (Guo et al., "Towards Byzantine-resilient Learning in Decentralized Systems",
    arXiv 2002.08569, 2020; journal version "Byzantine-resilient decentralized stochastic gradient
    descent", IEEE TCSVT).

    1. Distance stage: ``N_s`` = the ``⌈ρ·n⌉`` received vectors nearest to ``own`` (Euclidean);
       ``rho=None`` (default) keeps ``n − f``, i.e. ρ = the expected fraction of benign neighbours
       the paper sets ρ to.
    2. Performance stage: ``N_r = {j ∈ N_s : ℓ(x_j) <= ℓ(own)}`` with ``ℓ`` the mean
       cross-entropy on the peer's local validation set; if empty, ``N_r`` = the single
       lowest-loss member of ``N_s``.
    3. ``result = α·own + (1 − α)·mean_{j ∈ N_r} x_j``.

    Deviations: the paper evaluates ℓ on a training mini-batch and adds the local gradient step
    to the same update; fedsim trains separately and scores on the validation split. The epfml
    reimplementation falls back to the *nearest* neighbour when ``N_r`` is empty; we follow the
    paper (lowest loss). The own vector is the reference, weighted by ``alpha``.

    The Bristle authors' MOZI (jverbraeken/trustchain-superapp at f1fb8fb5, ``fedml/src/main/
    java/nl/tudelft/trustchain/fedml/ai/gar/Mozi.kt``, run as ``Mozi(0.5)`` in ``Types.kt``: the
    baseline of their logs) differs in four places, each a parameter here; their variant is
    ``{rho: 0.5, reference: previous, fallback: own, loss_l2: 0.005}``:

    * ``rho``: they keep ``⌈0.5·n⌉`` nearest (``fracBenign = 0.5``), fedsim by default ``n − f``.
    * ``reference``: which own model the two stages compare against. ``"trained"`` (default):
      the own model after this round's local training (the vector the rule gets as ``own``).
      ``"previous"``: the own model before it (``ctx.previous``, the last aggregation's result) —
      the paper's ``x_{i,k}`` (distances and losses are taken before the gradient step) and the
      authors' ``oldModel`` (``Node.kt``: ``oldParams`` is set before ``fitNetwork``). The result
      is ``α·own + (1 − α)·mean(N_r)`` with the trained ``own`` either way (their
      ``oldModel.sub(gradient)``).
    * ``fallback``: when no candidate of ``N_s`` has a loss ≤ the reference's. ``"lowest_loss"``
      (default, the paper): ``N_r`` = the lowest-loss member of ``N_s``. ``"own"`` (their code,
      commented "This is not included in the original algorithm"): the result is ``own``.

    * ``loss_l2``: their loss is DL4J's ``network.score`` (on up to 100 validation samples), which
      adds the L2 penalty of the scored weights, ``l2/2·||W||²`` (``l2 = 5e-3`` in their runs; the
      bias is not penalised), to the mean cross-entropy; 0 (default): the plain mean cross-entropy.

    Whole models (``model.trainable`` all or last_k): ``ℓ`` is the whole candidate model's
    cross-entropy on the peer's validation inputs (``ctx.val_logits``), ``loss_l2`` penalises every
    trainable parameter; ``reference="previous"`` is not available there (the engine keeps no
    pre-training copy of whole models).
    """
    exchanges = "full_model"  # what a message carries (byte accounting)
    scores_whole_models = True  # the loss reads only validation_logits (whole models: ctx.val_logits)

    rho: float | None = param(None, Real(lo=0.0, hi=1.0, lo_open=True, null=True))
    alpha: float = param(0.5, Real(lo=0.0, hi=1.0))
    reference: str = param("trained", Options(choices=("trained", "previous")))
    fallback: str = param("lowest_loss", Options(choices=("lowest_loss", "own")))
    loss_l2: float = param(0.0, Real(lo=0.0))

    needs: ClassVar[frozenset[str]] = frozenset({"validation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.reference == "previous":  # the engine supplies ctx.previous only to rules that ask
            self.needs = frozenset({"validation", "previous"})
        if self.rho is not None:  # k = ceil(rho * n) candidates: f is not read
            self.reads_f = False

    def check(self, n: int, f: int) -> None:
        check_f(f)

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        ref = own
        if self.reference == "previous":
            if ctx.previous is None:
                raise ValueError("mozi: reference='previous' needs ctx.previous (the own model before training)")
            ref = ctx.previous.to(own.device)
        n = received.shape[0]
        k = n - runtime_f(ctx, n) if self.rho is None else math.ceil(self.rho * n)
        ns = nearest(dists_to(received, ref), max(1, min(k, n)))
        cand = f64(received[ns])
        scored = torch.cat([f64(ref)[None], cand])
        logits, y = validation_logits(scored, ctx, "mozi")
        loss = mean_cross_entropy(logits, y)
        if self.loss_l2 > 0:  # DL4J's score adds the weights' L2 penalty
            w, _ = unflatten(scored, ctx.layer_shape, ctx.bias)
            loss = loss + 0.5 * self.loss_l2 * (w * w).sum(dim=(-2, -1))
        keep = loss[1:] <= loss[0]
        if not bool(keep.any()):
            if self.fallback == "own":
                return own.clone()
            keep = torch.zeros_like(keep)
            keep[int(torch.argmin(loss[1:]))] = True
        out = self.alpha * f64(own) + (1 - self.alpha) * cand[keep].mean(dim=0)
        return to_like(out, own)


@register("balance")
@dataclass
class Balance(Strategy):
    """BALANCE (Fang et al., "BALANCE: Byzantine-robust Averaging through Local Similarity in
    Decentralization", published as "Byzantine-Robust Decentralized Federated Learning", ACM CCS
    2024).

    Accept ``x_j`` iff ``||x_j − own|| <= γ · exp(−κ · t/T) · ||own||`` with ``t = ctx.round`` and
    ``T = ctx.total_rounds``; ``result = α·own + (1 − α)·mean(accepted)``, or ``own`` when none is
    accepted. The own vector is the reference, weighted by ``alpha``. Defaults γ=0.3, κ=1, α=0.5
    (the paper's default setting).
    """
    exchanges = "full_model"  # what a message carries (byte accounting)
    reads_f = False  # f changes nothing this rule does (a scenario's strategy.f is refused)

    gamma: float = param(0.3, Real(lo=0.0, lo_open=True))
    kappa: float = param(1.0, Real(lo=0.0))
    alpha: float = param(0.5, Real(lo=0.0, hi=1.0))

    def check(self, n: int, f: int) -> None:
        check_f(f)

    def threshold(self, own: Tensor, ctx: AggregationContext) -> float:
        lam = ctx.round / max(ctx.total_rounds, 1)
        return self.gamma * math.exp(-self.kappa * lam) * float(torch.linalg.vector_norm(f64(own)))

    def __call__(self, own: Tensor, received: Tensor, ctx: AggregationContext) -> Tensor:
        accepted = dists_to(received, own) <= self.threshold(own, ctx)
        if not bool(accepted.any()):
            return own.clone()
        out = self.alpha * f64(own) + (1 - self.alpha) * f64(received[accepted]).mean(dim=0)
        return to_like(out, own)
