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
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attacks.probes._head import flatten, head_logits, train_heads, unflatten
from attacks.probes._records import Record
from attacks.probes.oracles import CountingOracle, Oracle, dense_from_topk

# ----------------------------------------------------------------------------- hidden size


@dataclass
class HiddenSizeEstimate(Record):
    """Hidden size read from the singular values of the (centered) logit matrix.

    Attributes:
        hidden_size: estimated ``d`` (``C`` when not identifiable because the logits span
            ``R^C``; ``n − 1`` when too few queries were made).
        identifiable: whether a drop was seen below the maximal possible rank.
        numerical_rank: singular values above ``rtol · σ_1``.
        max_rank: ``min(n − 1, C)`` (``C − 1`` replaces ``C`` with ``center_classes``).
        gap_ratio: ``σ_h / σ_{h+1}`` at the chosen drop (``inf`` for an exact zero, ``None`` if
            no drop).
        singular_values: all singular values, descending.
        n_queries: rows of the logit matrix.
        note: why the size is or is not identifiable.
    """

    hidden_size: int
    identifiable: bool
    numerical_rank: int
    max_rank: int
    gap_ratio: float | None
    singular_values: list[float]
    n_queries: int
    note: str


def hidden_size_from_logits(
    Z: Tensor,
    *,
    rtol: float | None = None,
    min_gap: float = 100.0,
    center_classes: bool = False,
) -> HiddenSizeEstimate:
    """Estimate the hidden size ``d`` from query logits ``Z [n, C]`` (Carlini et al. 2024, §4).

    ``Z_c = Z − 1 z̄ᵀ`` (column means: removes the bias, logits live in a ≤ d-dim affine
    subspace) has singular values ``σ_1 ≥ … ≥ σ_k``. If some fall below ``rtol · σ_1`` (default
    ``10 · max(n, C) · eps(dtype)``), the hidden size is the numerical rank. Otherwise (noisy or
    rounded logits) it is the position of the largest ratio ``σ_i / σ_{i+1}``, if that ratio is
    at least ``min_gap``. With no drop below ``max_rank = min(n − 1, C)`` the size is not
    identifiable: ``C`` is returned when the logits span ``R^C`` (``d ≥ C``), ``n − 1`` when the
    attacker simply needs more queries.

    ``center_classes`` also subtracts each row's mean (for log-probability outputs, whose
    per-query normaliser adds a direction ``1``); the maximal rank becomes ``C − 1``.
    """
    n, c = Z.shape
    if n < 2:
        raise ValueError("need at least 2 query logit vectors")
    eps = torch.finfo(Z.dtype if Z.is_floating_point() else torch.float32).eps
    z = Z.detach().to(torch.float64)
    if center_classes:
        z = z - z.mean(1, keepdim=True)
    z = z - z.mean(0, keepdim=True)
    s = torch.linalg.svdvals(z)
    width = c - 1 if center_classes else c
    max_rank = min(n - 1, width)
    tol = (10.0 * max(n, c) * eps if rtol is None else rtol) * float(s[0])
    rank = int((s > tol).sum())
    sv = [float(v) for v in s]
    gap: float | None
    if float(s[0]) == 0.0:
        return HiddenSizeEstimate(0, True, 0, max_rank, None, sv, n, "all logits equal")
    if rank < max_rank:
        h = rank
        gap = float(s[h - 1] / s[h]) if float(s[h]) > 0 else math.inf
    else:
        ratios = s[: max_rank - 1] / s[1:max_rank].clamp_min(torch.finfo(torch.float64).tiny)
        i = int(torch.argmax(ratios)) if ratios.numel() else 0
        if ratios.numel() and float(ratios[i]) >= min_gap:
            h, gap = i + 1, float(ratios[i])
        else:
            h, gap = max_rank, None
    if h < max_rank:
        return HiddenSizeEstimate(h, True, rank, max_rank, gap, sv, n, "singular-value drop")
    if max_rank == width:
        note = (f"logits span all of R^{width}: hidden size >= {width} is not identifiable "
                f"(returned C = {c})")
        return HiddenSizeEstimate(c, False, rank, max_rank, gap, sv, n, note)
    return HiddenSizeEstimate(h, False, rank, max_rank, gap, sv, n,
                              f"only {n} queries: rank is capped at n - 1 = {n - 1}; query more")


# ----------------------------------------------------------------------- layer recovery


@dataclass
class LayerRecovery(Record):
    """Least-squares recovery of ``[W b]`` from known features.

    Attributes:
        params: the recovered head ``[P]`` (same layout as the target).
        relative_error: ``‖θ̂ − θ‖_F / ‖θ‖_F`` when the true head was given, else ``None``.
        residual: ``‖[H 1] Θ̂ − Z‖_F / ‖Z‖_F``.
        rank: rank of the design ``[H 1]``.
        determined: ``rank == d + 1`` (with bias) / ``d``: the solution is unique (exact on
            noiseless logits); otherwise the minimum-norm solution.
        n_queries: rows used.
    """

    params: Tensor = field(metadata={"json": False})
    relative_error: float | None
    residual: float
    rank: int
    determined: bool
    n_queries: int


def recover_layer_known_features(
    H: Tensor,
    Z: Tensor,
    *,
    bias: bool = True,
    true_params: Tensor | None = None,
) -> LayerRecovery:
    """Solve ``[H 1] Θ = Z`` for ``Θ = [Wᵀ; bᵀ]`` (min-norm least squares, float64).

    ``H [n, d]`` known features, ``Z [n, C]`` their logits. Exact (up to float error) on
    noiseless logits when ``n ≥ d + 1`` generic queries (``d`` without bias).
    """
    n, d = H.shape
    h64, z64 = H.detach().to(torch.float64), Z.detach().to(torch.float64)
    A = torch.cat([h64, torch.ones(n, 1, dtype=torch.float64, device=H.device)], 1) if bias else h64
    theta = torch.linalg.pinv(A) @ z64  # [d(+1), C]
    w = theta[:d].T
    b = theta[d] if bias else None
    params = flatten(w, b)
    rank = int(torch.linalg.matrix_rank(A))
    residual = float(torch.linalg.norm(A @ theta - z64) / torch.linalg.norm(z64).clamp_min(1e-300))
    rel = None
    if true_params is not None:
        t = true_params.detach().to(torch.float64)
        rel = float(torch.linalg.norm(params - t) / torch.linalg.norm(t).clamp_min(1e-300))
    return LayerRecovery(params, rel, residual, rank, rank == A.shape[1], n)


@dataclass
class SubspaceRecovery(Record):
    """Recovery of ``W`` up to a linear map from logits alone (Carlini et al. 2024, §4.2).

    Attributes:
        basis: ``W̃ = V_h Σ_h`` ``[C, h]`` (Carlini et al.'s ``U·Σ``; the column space of ``W``).
        features: ``[n, h]`` latent features with ``Z_c ≈ features · W̃ᵀ``.
        offset: ``[C]`` mean logit vector (``b + W h̄``: the bias is only known modulo ``col W``).
        hidden_size: ``h`` used.
        reconstruction_error: ``‖features W̃ᵀ − Z_c‖_F / ‖Z_c‖_F`` (0 when ``h ≥`` rank).
        subspace_error: ``min_G ‖W̃ G − W‖_F / ‖W‖_F`` when the true ``W`` was given.
        max_principal_angle: largest principal angle (radians) between ``col W̃`` and
            ``col W`` when given.
        alignment: the least-squares ``G`` ``[h, d]``.
    """

    basis: Tensor = field(metadata={"json": False})
    features: Tensor = field(metadata={"json": False})
    offset: Tensor = field(metadata={"json": False})
    hidden_size: int
    reconstruction_error: float
    subspace_error: float | None = None
    max_principal_angle: float | None = None
    alignment: Tensor | None = field(default=None, metadata={"json": False})


def recover_layer_unknown_features(
    Z: Tensor,
    hidden_size: int | None = None,
    *,
    true_weight: Tensor | None = None,
) -> SubspaceRecovery:
    """SVD recovery of the output layer up to an invertible ``h×h`` map.

    ``Z_c = Z − 1 z̄ᵀ = U Σ Vᵀ``; with ``h`` the hidden size (estimated by
    :func:`hidden_size_from_logits` when ``None``), ``W̃ = V_{:h} Σ_{:h}`` spans ``col(W)`` and
    ``Z_c ≈ U_{:h} W̃ᵀ``. Given the true ``W [C, d]``, ``G = argmin ‖W̃ G − W‖_F`` by least
    squares and the relative residual is the subspace error (≈ 0 on noiseless logits).
    """
    z = Z.detach().to(torch.float64)
    offset = z.mean(0)
    zc = z - offset
    h = hidden_size_from_logits(Z).hidden_size if hidden_size is None else int(hidden_size)
    U, S, Vh = torch.linalg.svd(zc, full_matrices=False)
    h = max(1, min(h, S.numel()))
    basis = Vh[:h].T * S[:h]
    feats = U[:, :h]
    recon = float(torch.linalg.norm(feats @ basis.T - zc) / torch.linalg.norm(zc).clamp_min(1e-300))
    out = SubspaceRecovery(basis, feats, offset, h, recon)
    if true_weight is not None:
        w = true_weight.detach().to(torch.float64)
        G = torch.linalg.pinv(basis) @ w
        out.alignment = G
        out.subspace_error = float(torch.linalg.norm(basis @ G - w) / torch.linalg.norm(w).clamp_min(1e-300))
        q1 = Vh[:h].T
        uw, sw, _ = torch.linalg.svd(w, full_matrices=False)
        q2 = uw[:, : int((sw > sw[0] * 1e-10).sum())]
        cos = torch.linalg.svdvals(q1.T @ q2).clamp(-1.0, 1.0)
        # angles of the smaller subspace inside the larger one
        out.max_principal_angle = float(torch.arccos(cos.min())) if cos.numel() else None
    return out


# --------------------------------------------------------------------------- top-k leakage


@dataclass
class TopKRecovery(Record):
    """Full logit vectors recovered from a top-``k`` API with a logit bias.

    Attributes:
        logits: ``[m, C]`` in the frame of the unbiased answer (exact logits for a logit API,
            exact log-probabilities for a log-prob API), or ``None`` (label-only API).
        queries: oracle rows used, the unbiased first query included.
        k: classes the API returns per query.
        complete: every entry was recovered.
        exact_possible: ``False`` for label-only outputs (``k = 1`` or no values).
        max_bias: the largest logit bias that had to be used.
        note: human-readable summary.
    """

    logits: Tensor | None = field(metadata={"json": False})
    queries: int
    k: int
    complete: bool
    exact_possible: bool
    max_bias: float
    note: str


def recover_full_logits_topk(
    oracle: Oracle,
    x: Tensor,
    num_classes: int,
    *,
    bias_value: float = 100.0,
    max_retries: int = 8,
    first: tuple[Tensor, Tensor] | None = None,
) -> TopKRecovery:
    """Carlini et al. (2024) logit-bias attack on a top-``k`` oracle (see module docstring).

    1. Unbiased query: top-``k`` classes and values ``v⁰`` (frame of the answer); ``t`` is the
       argmax (reference class).
    2. The ``C − k`` unseen classes of each row are split into groups of ``k − 1``; for each
       group one query per row with bias ``B`` on the group. The answer contains the group and
       ``t``; ``ẑ_j = v_j − B − v_t + v⁰_t``. Rows where a biased class or ``t`` is missing
       (``B`` too small) are re-queried with ``4B`` up to ``max_retries`` times.

    ``first`` passes an already-made unbiased answer ``(indices, values)`` for ``x`` (its ``m``
    queries are still counted in ``queries``).
    """
    counter = CountingOracle(oracle)
    if first is None:
        idx0, v0 = counter(x, None)
        extra = 0
    else:
        idx0, v0 = first
        extra = int(x.shape[0])
    m, k = idx0.shape
    c = num_classes
    if k == 1 or not bool(torch.isfinite(v0).all()):
        return TopKRecovery(None, counter.count + extra, k, False, False, 0.0,
                            "label-only outputs: exact logit recovery is impossible with this attack; "
                            "fall back to distillation from labels (distill_student)")
    dense0 = dense_from_topk(idx0, v0.to(torch.float64), c)
    if k >= c:
        return TopKRecovery(dense0, counter.count + extra, k, True, True, 0.0, "full logits returned")
    known = torch.isfinite(dense0)
    top = idx0[:, :1]
    unknown = torch.argsort(known.to(torch.int8), dim=1, stable=True)[:, : c - k]
    out = dense0.clone()
    ref0 = dense0.gather(1, top)
    complete, max_b = True, 0.0
    for s in range(0, c - k, k - 1):
        cols = unknown[:, s : s + k - 1]
        pending = torch.arange(m, device=x.device)
        b = torch.full((m,), float(bias_value), dtype=torch.float64, device=x.device)
        for _ in range(max_retries + 1):
            cp = cols[pending]
            lb = torch.zeros(pending.numel(), c, dtype=torch.float64, device=x.device)
            lb.scatter_(1, cp, b[pending, None].expand_as(cp).contiguous())
            max_b = max(max_b, float(b[pending].max()))
            idx, vals = counter(x[pending], lb.to(v0.dtype))
            dense = dense_from_topk(idx, vals.to(torch.float64), c)
            got = dense.gather(1, cp)
            ref = dense.gather(1, top[pending])
            ok = torch.isfinite(got).all(1) & torch.isfinite(ref[:, 0])
            rec = got - b[pending, None] - ref + ref0[pending]
            rows = pending[ok]
            out[rows] = out[rows].scatter(1, cp[ok], rec[ok])
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            b[pending] *= 4.0
        if pending.numel():
            complete = False
    note = "all logits recovered" if complete else "some logits missing (raise bias_value/max_retries)"
    return TopKRecovery(out, counter.count + extra, k, complete, True, max_b, note)


# ---------------------------------------------------------------------------- distillation


@dataclass
class DistillInfo(Record):
    """How a student was distilled.

    Attributes:
        queries: oracle rows used. k: classes per answer.
        targets: ``"soft_full"``, ``"soft_topk"`` (softmax renormalised over the top-``k``) or
            ``"labels"``.
        temperature, epochs: training settings.
    """

    queries: int
    k: int
    targets: str
    temperature: float
    epochs: int


def distill_from_outputs(
    x: Tensor,
    indices: Tensor,
    values: Tensor,
    num_classes: int,
    *,
    bias: bool = True,
    targets: str = "auto",
    temperature: float = 1.0,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
) -> tuple[Tensor, str]:
    """Train a student head on ``x`` from already-leaked outputs → ``(params [P], target kind)``.

    Soft targets (values leaked, ``k > 1``): ``p = softmax(v/T)`` over the returned classes (the
    others get probability 0; exact teacher probabilities when ``k = C``), loss
    ``−Σ_c p_c log softmax(z_s)_c`` (= KL up to a constant); the trained student is multiplied
    by ``T`` so its logits estimate the teacher's. Labels (``k = 1`` or no values):
    cross-entropy on ``indices[:, 0]``.
    """
    k = indices.shape[1]
    use_soft = (targets in {"auto", "soft"}) and k > 1 and bool(torch.isfinite(values).all())
    if targets == "soft" and not use_soft:
        raise ValueError("soft targets need k > 1 finite values")
    xd = x.detach()
    if use_soft:
        dense = dense_from_topk(indices, values.to(xd.dtype) / temperature, num_classes)
        probs = torch.softmax(torch.nan_to_num(dense, nan=float("-inf")), dim=-1)
        student = train_heads(xd, num_classes, soft_targets=probs, bias=bias, epochs=epochs, lr=lr,
                              weight_decay=weight_decay)[0] * temperature
        return student, ("soft_full" if k >= num_classes else "soft_topk")
    student = train_heads(xd, num_classes, y=indices[:, 0], bias=bias, epochs=epochs, lr=lr,
                          weight_decay=weight_decay)[0]
    return student, "labels"


def distill_student(
    teacher_oracle: Oracle,
    public_x: Tensor,
    num_classes: int,
    *,
    bias: bool = True,
    targets: str = "auto",
    temperature: float = 1.0,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
) -> tuple[Tensor, DistillInfo]:
    """Query the teacher once on unlabelled public features and distill a student head.

    ``targets``: ``"auto"`` (soft when values leak, else labels), ``"soft"`` or ``"labels"``.
    Returns ``(student params [P], DistillInfo)``.
    """
    counter = CountingOracle(teacher_oracle)
    idx, vals = counter(public_x, None)
    student, kind = distill_from_outputs(public_x, idx, vals, num_classes, bias=bias, targets=targets,
                                         temperature=temperature, epochs=epochs, lr=lr,
                                         weight_decay=weight_decay)
    return student, DistillInfo(counter.count, int(idx.shape[1]), kind, temperature, epochs)


# ----------------------------------------------------------------------- the whole attack


@dataclass
class CloningReport(Record):
    """One point of a cloning curve.

    Attributes:
        queries: oracle rows the attack used (logit-bias queries included).
        n_query_points: distinct inputs queried.
        k: classes per answer (``C``: full logits; 1: labels).
        output: ``"full"``, ``"topk"`` or ``"labels"``.
        method: ``"least_squares"``, ``"distillation_soft"`` or ``"distillation_labels"``.
        hidden_size, hidden_size_identifiable: from :func:`hidden_size_from_logits` on the
            recovered logits (``None`` for labels).
        layer_relative_error: ``‖θ̂_c − θ_c‖ / ‖θ_c‖`` between class-centered clone and target
            (``None`` without the target's params).
        subspace_error: :func:`recover_layer_unknown_features` error (an attacker *without* the
            features; ``None`` for labels or without the target).
        agreement: fraction of test inputs where clone and target predict the same class.
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


def _center_classes(params: Tensor, layer_shape: tuple[int, int], bias: bool) -> Tensor:
    w, b = unflatten(params.to(torch.float64), layer_shape, bias)
    return flatten(w - w.mean(0, keepdim=True), None if b is None else b - b.mean())


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
    bias_value: float = 100.0,
    distill_epochs: int = 300,
    distill_lr: float = 0.05,
) -> tuple[Tensor, CloningReport]:
    """Clone the head behind ``oracle`` from queries on ``query_x`` (known public features).

    1. One unbiased query per input. Full logits → use them; top-``k`` with values →
       :func:`recover_full_logits_topk`; labels → no logits.
    2. With logits and ``method`` ``"auto"``/``"least_squares"``: row-center them and solve
       :func:`recover_layer_known_features`. With ``"distill"`` or labels only:
       :func:`distill_from_outputs` on the query inputs.
    3. Evaluate: hidden size, class-centered layer error and subspace error (given
       ``target_params``), agreement with the target and accuracy on ``(test_x, test_y)``.
       Without ``target_params`` the target's test predictions come from the oracle's top-1
       (not counted in ``queries``).

    Returns ``(clone params [P] float64, CloningReport)``.
    """
    if method not in {"auto", "least_squares", "distill"}:
        raise ValueError(f"method must be 'auto', 'least_squares' or 'distill', got {method!r}")
    n, d = query_x.shape
    c = num_classes
    shape = (c, d)
    counter = CountingOracle(oracle)
    idx, vals = counter(query_x, None)
    k = int(idx.shape[1])
    has_values = k > 1 and bool(torch.isfinite(vals).all())
    logits: Tensor | None = None
    complete: bool | None = None
    if has_values and k >= c:
        output = "full"
        logits = dense_from_topk(idx, vals.to(torch.float64), c)
    elif has_values:
        output = "topk"
        rec = recover_full_logits_topk(counter, query_x, c, bias_value=bias_value, first=(idx, vals))
        logits, complete = rec.logits, rec.complete
        if logits is not None and not complete:
            logits = None  # incomplete rows: fall back to distillation on the top-k values
    else:
        output = "labels"
    target_c = None if target_params is None else _center_classes(target_params, shape, bias)
    hs = sub_err = None
    if logits is not None:
        zc = logits - logits.mean(1, keepdim=True)
        hs = hidden_size_from_logits(zc, center_classes=True) if n >= 2 else None
        if target_c is not None and n >= 2:
            w_c, _ = unflatten(target_c, shape, bias)
            sub_err = recover_layer_unknown_features(zc, min(d, c), true_weight=w_c).subspace_error
    if logits is not None and method != "distill":
        zc = logits - logits.mean(1, keepdim=True)
        clone = recover_layer_known_features(query_x, zc, bias=bias).params
        used = "least_squares"
    else:
        if method == "least_squares":
            raise ValueError("least_squares needs leaked logits (full or top-k with values)")
        clone, kind = distill_from_outputs(query_x.to(torch.float64), idx, vals, c, bias=bias,
                                           epochs=distill_epochs, lr=distill_lr)
        used = "distillation_labels" if kind == "labels" else "distillation_soft"
    clone = clone.to(torch.float64)
    rel = None
    if target_c is not None:
        cc = _center_classes(clone, shape, bias)
        rel = float(torch.linalg.norm(cc - target_c) / torch.linalg.norm(target_c).clamp_min(1e-300))
    agreement = clone_acc = target_acc = None
    if test_x is not None:
        tx = test_x.to(torch.float64)
        pred = head_logits(clone, tx, shape, bias).argmax(-1)
        if target_params is not None:
            zt = head_logits(target_params.to(torch.float64), tx, shape, bias)
            tpred = zt.argmax(-1)
        else:
            tpred = oracle(test_x, None)[0][:, 0]
        agreement = float((pred == tpred).to(torch.float64).mean())
        if test_y is not None:
            clone_acc = float((pred == test_y).to(torch.float64).mean())
            target_acc = float((tpred == test_y).to(torch.float64).mean())
    report = CloningReport(
        queries=counter.count, n_query_points=n, k=k, output=output, method=used,
        hidden_size=None if hs is None else hs.hidden_size,
        hidden_size_identifiable=None if hs is None else hs.identifiable,
        layer_relative_error=rel, subspace_error=sub_err, agreement=agreement,
        clone_accuracy=clone_acc, target_accuracy=target_acc, topk_complete=complete,
    )
    return clone, report


def cloning_curve(
    oracle: Oracle,
    query_x: Tensor,
    query_counts: list[int],
    num_classes: int,
    *,
    test_x: Tensor | None = None,
    test_y: Tensor | None = None,
    target_params: Tensor | None = None,
    bias: bool = True,
    method: str = "auto",
    bias_value: float = 100.0,
    distill_epochs: int = 300,
    distill_lr: float = 0.05,
) -> list[CloningReport]:
    """:func:`clone_from_oracle` on the first ``n`` rows of ``query_x`` for each ``n`` in
    ``query_counts`` (each budget is a fresh attack; ``CloningReport.queries`` counts its own
    oracle rows, logit-bias queries included)."""
    reports = []
    for n in query_counts:
        if not 1 <= n <= query_x.shape[0]:
            raise ValueError(f"query count {n} outside [1, {query_x.shape[0]}]")
        _, rep = clone_from_oracle(oracle, query_x[:n], num_classes, bias=bias, method=method,
                                   test_x=test_x, test_y=test_y, target_params=target_params,
                                   bias_value=bias_value, distill_epochs=distill_epochs,
                                   distill_lr=distill_lr)
        reports.append(rep)
    return reports
