"""Cloning probe: steal a peer's output layer from what its prediction API leaks.

Setting: a target head ``z = W h(x) + b`` (``W ∈ R^{C×d}``) behind an :mod:`oracle
<attacks.probes.oracles>`. The attacker queries ``n`` inputs and sees full logits, the top-``k``
logits / log-probabilities, or only labels (possibly rounded or noised by a defence).

* :func:`hidden_size_from_logits` — Carlini et al. 2024, "Stealing Part of a Production
  Language Model" (ICML), §4, and Finlayson et al. 2024, "Logits of API-Protected LLMs Leak
  Proprietary Information": the logit vectors ``z_i = W h_i + b`` lie in an affine subspace of
  ``R^C`` of dimension ≤ d, so after centering (``Z − 1 z̄ᵀ``, which removes ``b``) the query
  matrix has rank ``min(d, n−1, C)``. The hidden size is read from the singular-value drop.
  When ``d ≥ C`` the logits span all of ``R^C`` and ``d`` is not identifiable (we return ``C``
  and ``identifiable=False``).
* :func:`recover_layer_known_features` — the Bristle setting: the backbone is public and
  frozen, so the attacker knows ``h_i``; ``[W b]`` is the exact least-squares solution of
  ``[H 1] Θ = Z`` as soon as ``[H 1]`` has full column rank (``n ≥ d + 1`` generic queries),
  cf. the grey-box algebraic attack of Zanella-Béguelin et al. 2021 ("Grey-box Extraction of
  Natural Language Models").
* :func:`recover_layer_unknown_features` — Carlini et al. §4.2: without ``h``, the SVD
  ``Z_c = U Σ Vᵀ`` gives ``W̃ = V_h Σ_h`` with ``W = W̃ G`` for an unknown ``G`` (``h×d``,
  invertible when ``h = d``): the layer is recovered up to a linear map. We report the
  subspace error ``min_G ‖W̃ G − W‖_F / ‖W‖_F`` (least squares) and the largest principal angle.
* :func:`recover_full_logits_topk` — Carlini et al. §5 (logit-bias attack): with a top-``k``
  API that accepts a logit bias, add a large bias ``B`` to ``k−1`` classes not yet seen; they
  enter the top-``k`` together with the unbiased argmax ``t`` (the reference class), and
  ``z_j − z_t = (v_j − B) − v_t`` whatever per-query normaliser the API subtracts. Each input
  costs ``1 + ⌈(C − k)/(k − 1)⌉`` queries. Label-only APIs (``k = 1``, no values) are out of
  reach of this attack (Carlini et al.'s logprob-free binary-search variant is not implemented):
  we report it and fall back to distillation.
* :func:`distill_student` — distillation from leaked outputs (Hinton et al. 2015; the fallback
  the "Clone What You Can't Steal" line of work relies on when exact recovery is impossible):
  KL to the teacher's (top-``k`` renormalised) softmax when values leak, cross-entropy on the
  labels when only labels leak, trained on unlabelled public features.
* :func:`clone_from_oracle` / :func:`cloning_curve` — the whole attack for one / several query
  budgets → :class:`CloningReport`.

Class-centering: log-probability APIs subtract an unknown per-query constant ``c(x)`` from the
logits, and softmax cannot tell ``W`` from ``W + 1 uᵀ`` anyway, so the end-to-end attack fits
row-centered logits ``z − mean_c(z)`` and compares the clone with the *class-centered* target
(``W − 1 w̄ᵀ``, ``b − b̄``), the part of the layer the outputs determine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attacks.probes._head import flatten, head_logits, unflatten
from attacks.probes._records import Record
from attacks.probes.cloning_distill import DistillInfo, distill_from_outputs, distill_student
from attacks.probes.cloning_recovery import (
    HiddenSizeEstimate,
    LayerRecovery,
    RidgeRecovery,
    SubspaceRecovery,
    hidden_size_from_logits,
    recover_layer_known_features,
    recover_layer_ridge,
    recover_layer_unknown_features,
)
from attacks.probes.cloning_topk import TopKRecovery, recover_full_logits_topk
from attacks.probes.oracles import AveragingOracle, CountingOracle, Oracle, dense_from_topk

__all__ = [
    "CloningReport", "DistillInfo", "HiddenSizeEstimate", "LayerRecovery", "RidgeRecovery", "SubspaceRecovery",
    "TopKRecovery", "clone_from_oracle", "cloning_curve", "distill_from_outputs", "distill_student",
    "hidden_size_from_logits", "kl_to_target", "project_logits", "recover_full_logits_topk",
    "recover_layer_known_features", "recover_layer_ridge", "recover_layer_unknown_features",
]


# ----------------------------------------------------------------------- the whole attack


@dataclass
class CloningReport(Record):
    """One point of a cloning curve.

    Attributes:
        queries: oracle rows the attack used (logit-bias queries and repeats included).
        n_query_points: distinct inputs queried.
        repeats: times each query was asked (answers averaged: :class:`AveragingOracle`).
        k: classes per answer (``C``: full logits; 1: top-1 with value, or a label).
        output: ``"full"``, ``"topk"`` or ``"labels"``.
        method: ``"least_squares"``, ``"ridge"``, ``"distillation_soft"`` or
            ``"distillation_labels"``.
        ridge_lambda: ``λ`` of the ridge fit (GCV; ``None`` for other methods).
        subspace_used: stage 2 fitted the logits projected onto the stage-1 subspace.
        hidden_size, hidden_size_identifiable: stage 1, :func:`hidden_size_from_logits` on the
            recovered logits (``None`` for labels).
        singular_values: stage 1's singular values (class- and column-centered logits).
        subspace_error, max_principal_angle: :func:`recover_layer_unknown_features` against the
            true output projection (``true_projection``) or, failing that, the class-centered
            target weight; ``None`` for labels.
        layer_relative_error: ``‖θ̂_c − θ_c‖ / ‖θ_c‖`` between class-centered clone and target
            (``None`` without the target's linear params).
        agreement: fraction of test inputs where clone and target predict the same class.
        kl_divergence: mean ``KL(softmax(z_target) ‖ softmax(z_clone))`` on the test inputs (nats;
            ``None`` without the target's logits).
        clone_accuracy, target_accuracy: test accuracy (``None`` without labels / target).
        topk_complete: whether the logit-bias recovery got every logit (top-``k`` only).
    """

    queries: int
    n_query_points: int
    k: int
    output: str
    method: str
    hidden_size: int | None
    hidden_size_identifiable: bool | None
    layer_relative_error: float | None
    subspace_error: float | None
    agreement: float | None
    clone_accuracy: float | None
    target_accuracy: float | None
    topk_complete: bool | None = None
    repeats: int = 1
    ridge_lambda: float | None = None
    subspace_used: bool = False
    singular_values: list[float] | None = None
    max_principal_angle: float | None = None
    kl_divergence: float | None = None


def _center_classes(params: Tensor, layer_shape: tuple[int, int], bias: bool) -> Tensor:
    w, b = unflatten(params.to(torch.float64), layer_shape, bias)
    return flatten(w - w.mean(0, keepdim=True), None if b is None else b - b.mean())


def kl_to_target(target_logits: Tensor, clone_logits: Tensor) -> float:
    """Mean ``KL(softmax(z_t) ‖ softmax(z_c))`` over rows (nats)."""
    lt = torch.log_softmax(target_logits.to(torch.float64), -1)
    lc = torch.log_softmax(clone_logits.to(torch.float64), -1)
    return float((lt.exp() * (lt - lc)).sum(-1).mean())


def project_logits(Z: Tensor, hidden_size: int) -> Tensor:
    """Project logit rows onto the top-``h`` right singular subspace of their column-centered
    stack (Carlini et al.'s ``col W̃``): ``z̄ + (Z − 1z̄ᵀ) Q Qᵀ``. Noise in the ``C − h`` other
    directions is removed; an exact rank-``h`` stack is unchanged."""
    z = Z.to(torch.float64)
    zm = z.mean(0)
    _, _, Vh = torch.linalg.svd(z - zm, full_matrices=False)
    q = Vh[:hidden_size].T
    return zm + (z - zm) @ q @ q.T


def clone_from_oracle(
    oracle: Oracle,
    query_x: Tensor,
    num_classes: int,
    *,
    bias: bool = True,
    method: str = "auto",
    test_x: Tensor | None = None,
    test_y: Tensor | None = None,
    target_params: Tensor | None = None,
    target_model: Callable[[Tensor], Tensor] | None = None,
    true_projection: Tensor | None = None,
    repeats: int = 1,
    noise_sigma: float | None = None,
    subspace: str | bool = "auto",
    bias_value: float = 100.0,
    distill_epochs: int = 300,
    distill_lr: float = 0.05,
    values: str = "logits",
) -> tuple[Tensor, CloningReport]:
    """Clone the model behind ``oracle`` from queries on ``query_x`` (known public features).

    0. Each query is asked ``repeats`` times and the answers averaged (:class:`AveragingOracle`;
       ``queries`` counts every repeat).
    1. One unbiased query per input. Full logits → use them; top-``k`` with values (``k = 1``
       included) → :func:`recover_full_logits_topk` (rows it could not complete are dropped;
       fewer than 2 complete rows → distillation); labels → no logits.
    2. Stage 1 (Carlini et al. §4) on the row-centered logits: hidden size from the singular
       values (:func:`hidden_size_from_logits`; ``noise_sigma`` — the defence's known noise —
       switches to the noise-edge rule, with ``σ/√repeats``, times ``√3`` for top-``k ≥ 2``
       answers, whose recovered entries combine three noisy values), and the output projection up to an
       ``h×h`` map (:func:`recover_layer_unknown_features`) compared with ``true_projection``
       (``[C, h]``; else the target's weight). With ``subspace`` ``"auto"`` (a drop was detected,
       ``h < C − 1``) or ``True``, the logits are projected onto that subspace
       (:func:`project_logits`) before stage 2.
    3. Stage 2, a linear student on the known features: ``"ridge"`` (``"auto"``'s choice,
       :func:`recover_layer_ridge` with GCV), ``"least_squares"`` (min-norm, unregularised), or
       ``"distill"`` (:func:`distill_from_outputs`; the only option for labels).
    4. Evaluate on ``(test_x, test_y)``, never queried: agreement and KL to the target
       (``target_model`` logits, else the linear ``target_params``, else the oracle's top-1 —
       not counted in ``queries`` — and no KL), class-centered layer error (``target_params``).

    A linear student is exact for linear targets (a linear bottleneck included) and only an
    approximation of a ReLU bottleneck target.

    Returns ``(clone params [P] float64, CloningReport)``.
    """
    if method not in {"auto", "least_squares", "ridge", "distill"}:
        raise ValueError(f"method must be 'auto', 'ridge', 'least_squares' or 'distill', got {method!r}")
    if subspace not in ("auto", True, False):
        raise ValueError(f"subspace must be 'auto', True or False, got {subspace!r}")
    n, d = query_x.shape
    c = num_classes
    shape = (c, d)
    fit_x = query_x
    counter = CountingOracle(oracle)
    asker: Oracle = AveragingOracle(counter, repeats) if repeats > 1 else counter
    idx, vals = asker(query_x, None)
    k = int(idx.shape[1])
    has_values = bool(torch.isfinite(vals).all())
    logits: Tensor | None = None
    complete: bool | None = None
    if has_values and k >= c:
        output = "full"
        logits = dense_from_topk(idx, vals.to(torch.float64), c)
    elif has_values:
        output = "topk"
        rec = recover_full_logits_topk(asker, query_x, c, bias_value=bias_value, first=(idx, vals), values=values)
        logits, complete = rec.logits, rec.complete
        if logits is not None and not complete:
            ok = torch.isfinite(logits).all(1)  # fit on the complete rows; distil if fewer than 2
            if int(ok.sum()) >= 2:
                logits, fit_x = logits[ok], query_x[ok]
            else:
                logits = None
    else:
        output = "labels"
    target_c = None if target_params is None else _center_classes(target_params, shape, bias)
    hs = sub = None
    fit_z = None
    use_sub = False
    if logits is not None:
        zc = logits - logits.mean(1, keepdim=True)
        fit_z = zc
        if zc.shape[0] >= 2:
            sig = None if not noise_sigma else float(noise_sigma) / math.sqrt(repeats)
            if sig is not None and output == "topk" and k >= 2:
                sig *= math.sqrt(3.0)  # ẑ_j = v_j − v_t + v⁰_t: three noisy values per recovered entry
            hs = hidden_size_from_logits(zc, center_classes=True, noise_sigma=sig)
            ref = None
            if true_projection is not None:
                ref = true_projection.to(torch.float64)
                ref = ref - ref.mean(0, keepdim=True)
            elif target_c is not None:
                ref, _ = unflatten(target_c, shape, bias)
            h_used = hs.hidden_size if hs.identifiable else min(c - 1, zc.shape[0] - 1)
            if ref is not None:
                sub = recover_layer_unknown_features(zc, h_used, true_weight=ref)
            use = subspace is True or (subspace == "auto" and hs.identifiable and hs.hidden_size < c - 1)
            if use:
                fit_z, use_sub = project_logits(zc, h_used), True
    ridge_lam = None
    if fit_z is not None and method != "distill":
        if method == "least_squares":
            clone = recover_layer_known_features(fit_x, fit_z, bias=bias).params
            used = "least_squares"
        else:
            fit = recover_layer_ridge(fit_x, fit_z, bias=bias)
            clone, ridge_lam, used = fit.params, fit.lam, "ridge"
    else:
        if method in ("least_squares", "ridge"):
            raise ValueError(f"{method} needs leaked logits (full, top-k or top-1 with values)")
        clone, kind = distill_from_outputs(query_x.to(torch.float64), idx, vals, c, bias=bias,
                                           epochs=distill_epochs, lr=distill_lr)
        used = "distillation_labels" if kind == "labels" else "distillation_soft"
    clone = clone.to(torch.float64)
    rel = None
    if target_c is not None:
        cc = _center_classes(clone, shape, bias)
        rel = float(torch.linalg.norm(cc - target_c) / torch.linalg.norm(target_c).clamp_min(1e-300))
    agreement = clone_acc = target_acc = kl = None
    if test_x is not None:
        tx = test_x.to(torch.float64)
        zs = head_logits(clone, tx, shape, bias)
        pred = zs.argmax(-1)
        zt = None
        if target_model is not None:
            zt = target_model(tx).to(torch.float64)
        elif target_params is not None:
            zt = head_logits(target_params.to(torch.float64), tx, shape, bias)
        tpred = zt.argmax(-1) if zt is not None else oracle(test_x, None)[0][:, 0]
        if zt is not None:
            kl = kl_to_target(zt, zs)
        agreement = float((pred == tpred).to(torch.float64).mean())
        if test_y is not None:
            clone_acc = float((pred == test_y).to(torch.float64).mean())
            target_acc = float((tpred == test_y).to(torch.float64).mean())
    report = CloningReport(
        queries=counter.count, n_query_points=n, k=k, output=output, method=used,
        hidden_size=None if hs is None else hs.hidden_size,
        hidden_size_identifiable=None if hs is None else hs.identifiable,
        layer_relative_error=rel, subspace_error=None if sub is None else sub.subspace_error,
        agreement=agreement, clone_accuracy=clone_acc, target_accuracy=target_acc, topk_complete=complete,
        repeats=int(repeats), ridge_lambda=ridge_lam, subspace_used=use_sub,
        singular_values=None if hs is None else hs.singular_values[: min(c, n)],
        max_principal_angle=None if sub is None else sub.max_principal_angle, kl_divergence=kl,
    )
    return clone, report


def cloning_curve(
    oracle: Oracle,
    query_x: Tensor,
    query_counts: list[int],
    num_classes: int,
    **kwargs: Any,
) -> list[CloningReport]:
    """:func:`clone_from_oracle` (keyword arguments passed on) on the first ``n`` rows of
    ``query_x`` for each ``n`` in ``query_counts`` (each budget is a fresh attack;
    ``CloningReport.queries`` counts its own oracle rows, logit-bias queries and repeats
    included)."""
    reports = []
    for n in query_counts:
        if not 1 <= n <= query_x.shape[0]:
            raise ValueError(f"query count {n} outside [1, {query_x.shape[0]}]")
        _, rep = clone_from_oracle(oracle, query_x[:n], num_classes, **kwargs)
        reports.append(rep)
    return reports
