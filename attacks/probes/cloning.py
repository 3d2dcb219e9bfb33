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
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from attacks.probes._head import flatten, head_logits, train_heads, unflatten
from attacks.probes._records import Record
from attacks.probes.oracles import AveragingOracle, CountingOracle, Oracle, dense_from_topk

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
    noise_sigma: float | None = None,
    noise_margin: float = 1.5,
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

    Known noise (``noise_sigma`` = ``σ`` of i.i.d. Gaussian noise on each logit, e.g. a public
    defence, divided by ``√r`` after averaging ``r`` repeats): the rule above is replaced by a
    count of the singular values above the largest singular value pure noise would reach, the
    Marchenko–Pastur edge ``σ (√n + √C')`` (``C'`` the width after centering), times
    ``noise_margin`` (1.5: a margin for the finite-size fluctuations of the edge). Signal
    directions weaker than that are not detected (the estimate is then too small).
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
    if noise_sigma is not None and noise_sigma > 0:
        edge = noise_margin * float(noise_sigma) * (math.sqrt(n) + math.sqrt(width))
        h = max(1, int((s[:max_rank] > edge).sum()))
        gap = float(s[h - 1] / s[h]) if h < s.numel() and float(s[h]) > 0 else None
    elif rank < max_rank:
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
class RidgeRecovery(Record):
    """Ridge recovery of ``[W b]`` from known features, ``λ`` chosen by generalised cross-validation.

    Attributes:
        params: the recovered head ``[P]``.
        lam: the ``λ`` used (``0``: plain least squares won the GCV).
        rule: ``"gcv"`` or ``"fixed"``.
        dof: effective degrees of freedom ``tr S_λ = Σ s_i²/(s_i² + λ)`` (per output).
        gcv: the GCV score at ``λ``.
        relative_error: ``‖θ̂ − θ‖_F / ‖θ‖_F`` when the true head was given.
        n_queries: rows used.
    """

    params: Tensor = field(metadata={"json": False})
    lam: float
    rule: str
    dof: float
    gcv: float | None
    relative_error: float | None
    n_queries: int


def recover_layer_ridge(
    H: Tensor,
    Z: Tensor,
    *,
    bias: bool = True,
    lam: float | None = None,
    grid: int = 61,
    true_params: Tensor | None = None,
) -> RidgeRecovery:
    """Ridge regression ``min_Θ ‖[H 1] Θ − Z‖² + λ ‖W‖²`` (the bias is not penalised).

    The minimum-norm least-squares solve of :func:`recover_layer_known_features` is exact on
    noiseless logits but, on noisy ones, its error explodes as ``n`` approaches ``d + 1``
    (``[H 1]``'s smallest singular values go to 0: "double descent"). Ridge shrinks along those
    directions. With ``lam=None``, ``λ`` minimises Golub, Heath & Wahba's (1979) generalised
    cross-validation score

        ``GCV(λ) = n ‖(I − S_λ) Z_c‖_F² / (n − 1 − tr S_λ)²``,  ``S_λ = H_c (H_cᵀH_c + λI)⁻¹ H_cᵀ``

    (``H_c``, ``Z_c``: column-centered, which fits the unpenalised bias; the ``− 1`` counts it),
    an estimate of the out-of-sample squared error that needs no held-out queries. The grid is
    ``λ ∈ {0} ∪ s_1² · 10^[−12, 2]`` (``grid`` log-spaced points; ``s_1`` the largest singular
    value of ``H_c``); ``λ = 0`` is eligible only when ``n − 1 > rank``, so on noiseless logits
    with enough queries GCV is 0 there and the solve is exact.
    """
    n, d = H.shape
    h64, z64 = H.detach().to(torch.float64), Z.detach().to(torch.float64)
    hm = h64.mean(0) if bias else torch.zeros(d, dtype=torch.float64, device=H.device)
    zm = z64.mean(0) if bias else torch.zeros(z64.shape[1], dtype=torch.float64, device=H.device)
    hc, zc = h64 - hm, z64 - zm
    U, S, Vh = torch.linalg.svd(hc, full_matrices=False)
    keep = S > S[0] * max(n, d) * torch.finfo(torch.float64).eps if S.numel() else S > 0
    U, S, Vh = U[:, keep], S[keep], Vh[keep]
    uz = U.T @ zc  # [r, C]
    outside = float((zc - U @ uz).pow(2).sum())  # residual no λ can fit (direct: no cancellation)
    dof_bias = 1 if bias else 0

    def score(l: float) -> tuple[float, float]:
        f = S ** 2 / (S ** 2 + l) if l > 0 else torch.ones_like(S)
        resid = outside + float(((1 - f) ** 2 @ uz.pow(2)).sum())
        dof = float(f.sum())
        den = n - dof_bias - dof
        return (n * max(resid, 0.0) / den ** 2 if den > 1e-9 else math.inf), dof

    if lam is None:
        s1 = float(S[0]) ** 2 if S.numel() else 1.0
        cands = [0.0] + [s1 * 10.0 ** e for e in torch.linspace(-12, 2, grid).tolist()]
        scored = [(score(l), l) for l in cands]
        (g, dof), lam_ = min(scored, key=lambda t: t[0][0])
        rule = "gcv"
    else:
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        lam_, rule = float(lam), "fixed"
        g, dof = score(lam_)
    f = S / (S ** 2 + lam_) if lam_ > 0 else 1.0 / S
    w = (Vh.T * f) @ uz  # [d, C]
    b = zm - hm @ w
    params = flatten(w.T, b if bias else None)
    rel = None
    if true_params is not None:
        t = true_params.detach().to(torch.float64)
        rel = float(torch.linalg.norm(params - t) / torch.linalg.norm(t).clamp_min(1e-300))
    return RidgeRecovery(params, lam_, rule, dof, g if math.isfinite(g) else None, rel, n)


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
    values: str = "logits",
    bias_reference: bool = True,
) -> TopKRecovery:
    """Carlini et al. (2024) logit-bias attack on a top-``k`` oracle (see module docstring).

    1. Unbiased query: top-``k`` classes and values ``v⁰`` (frame of the answer); ``t`` is the
       argmax (reference class).
    2. The ``C − k`` unseen classes of each row are split into groups of ``k − 1``; for each
       group one query per row with bias ``B`` on the group. The answer contains the group and
       ``t``; ``ẑ_j = v_j − B − v_t + v⁰_t``. Rows where a biased class or ``t`` is missing
       (``B`` too small) are re-queried with ``4B`` up to ``max_retries`` times.

    ``bias_reference`` (default ``True``; a departure from Carlini et al., who leave ``t``
    unbiased): ``t`` gets the same bias ``B`` as the group, so ``ẑ_j = v_j − v_t + v⁰_t`` (``B``
    cancels) and the ``k`` answered classes are exactly the biased ones even when a defence
    rounds or noises the outputs before ranking (an unbiased ``t`` can then be pushed out of the
    answer by a tie or by noise, leaving the row incomplete). Identical on an undefended API.

    Top-1 *with its value* (``k = 1``; Carlini et al. §5, the single-token case): there is no
    reference class in the answer, but a raw-logit API (``values="logits"``) returns
    ``z_j + B`` when the bias ``B`` on class ``j`` makes it the argmax, so ``ẑ_j = v − B`` exactly;
    one biased query per class besides the argmax: ``C`` queries per input, unbiased one included
    (:func:`_top1_logit_bias`). A top-1 log-probability API (``values="logprobs"``) is not covered.

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
    if not bool(torch.isfinite(v0).all()):
        return TopKRecovery(None, counter.count + extra, k, False, False, 0.0,
                            "label-only outputs: exact logit recovery is impossible with this attack; "
                            "fall back to distillation from labels (distill_student)")
    if k == 1:
        if values != "logits":
            return TopKRecovery(None, counter.count + extra, k, False, False, 0.0,
                                "top-1 log-probabilities: the biased class's value depends on the "
                                "unknown normaliser; not implemented (fall back to distillation)")
        return _top1_logit_bias(counter, x, idx0, v0, c, bias_value, max_retries, extra)
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
            if bias_reference:
                lb.scatter_(1, top[pending], b[pending, None])
            max_b = max(max_b, float(b[pending].max()))
            idx, vals = counter(x[pending], lb.to(v0.dtype))
            dense = dense_from_topk(idx, vals.to(torch.float64), c)
            got = dense.gather(1, cp)
            ref = dense.gather(1, top[pending])
            ok = torch.isfinite(got).all(1) & torch.isfinite(ref[:, 0])
            rec = got - ref + ref0[pending] - (0.0 if bias_reference else b[pending, None])
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


def _top1_logit_bias(counter: CountingOracle, x: Tensor, idx0: Tensor, v0: Tensor, c: int,
                     bias_value: float, max_retries: int, extra: int) -> TopKRecovery:
    """Logit-bias attack on a top-1-with-value raw-logit API: ``ẑ_j = v_j(B e_j) − B``.

    Row ``i`` is re-queried with ``4B`` while the biased class is not the returned argmax (at
    most ``max_retries`` times)."""
    m = idx0.shape[0]
    out = torch.full((m, c), float("nan"), dtype=torch.float64, device=x.device)
    out.scatter_(1, idx0[:, :1], v0[:, :1].to(torch.float64))
    others = torch.argsort((torch.arange(c, device=x.device)[None, :] == idx0[:, :1]).to(torch.int8),
                           dim=1, stable=True)[:, : c - 1]  # every class but the argmax
    complete, max_b = True, 0.0
    for s in range(c - 1):
        col = others[:, s]
        pending = torch.arange(m, device=x.device)
        b = torch.full((m,), float(bias_value), dtype=torch.float64, device=x.device)
        for _ in range(max_retries + 1):
            lb = torch.zeros(pending.numel(), c, dtype=torch.float64, device=x.device)
            lb[torch.arange(pending.numel()), col[pending]] = b[pending]
            max_b = max(max_b, float(b[pending].max()))
            idx, vals = counter(x[pending], lb.to(v0.dtype))
            ok = idx[:, 0] == col[pending]
            rows = pending[ok]
            out[rows, col[rows]] = vals[ok, 0].to(torch.float64) - b[rows]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
            b[pending] *= 4.0
        if pending.numel():
            complete = False
    note = "all logits recovered (top-1 with value)" if complete else "some logits missing (raise bias_value)"
    return TopKRecovery(out, counter.count + extra, 1, complete, True, max_b, note)


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
