"""Squared Euclidean distances and the Krum kernel (scores from squared distances), shared by
the Krum-family rules (``strategies.krum``) and the attacks that run Krum locally
(``attacks.fang``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[..., |a|, |b|]`` between the rows of ``a [..., m, P]`` and
    ``b [..., n, P]`` (leading dims batch), in ``a``'s dtype.

    Uses the exact difference formula (no ``|a|² + |b|² − 2ab`` cancellation), without
    materialising the ``[m, n, P]`` difference tensor.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def krum_scores(sq: Tensor, f: int, *, degrade: bool = False) -> Tensor:
    """Krum scores (Blanchard et al., NeurIPS 2017) from the ``[..., N, N]`` squared distances ``sq``
    (not modified; leading dims batch) → ``[..., N]``: ``s(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²`` over the
    ``k = N − f − 2`` rows nearest to ``x_i`` (``i`` excluded).

    ``k < 1`` (Krum undefined) raises ``ValueError``; with ``degrade`` (a rule at run time, when
    fewer vectors arrived than validation assumed) ``k`` is clamped to ``[1, N − 1]`` instead
    and ``N <= 1`` scores 0.
    """
    size = sq.shape[-1]
    k = size - f - 2
    if degrade:
        if size <= 1:
            return torch.zeros(sq.shape[:-1], dtype=sq.dtype, device=sq.device)
        k = min(max(k, 1), size - 1)
    elif k < 1:
        raise ValueError(f"Krum needs n - f - 2 >= 1 vectors, got n={size}, f={f}")
    off = sq.clone()
    off.diagonal(dim1=-2, dim2=-1).fill_(math.inf)  # (the same values as sq + diag(inf): 0 added elsewhere)
    return torch.sort(off, dim=-1).values[..., :k].sum(dim=-1)
