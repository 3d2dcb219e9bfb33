"""Stage 1 of the cloning attack (:mod:`attacks.probes.cloning`): the hidden size from the SVD of
leaked logits and the output layer recovered from them — known features (least squares, ridge) or
unknown ones (the subspace up to a linear map)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attacks.probes._head import flatten
from attacks.probes._records import Record

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
