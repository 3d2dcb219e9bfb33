"""Shared math and parameter checks of the attacks (private: the API is the registry).

Everything here is pure torch (plus :mod:`statistics` for the normal quantile) and works on
``[rows, P]`` stacks of flattened vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from statistics import NormalDist

import torch
from torch import Tensor

# --- parameter validation (messages name the parameter and what is allowed) ---------------------


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number ``> 0`` (``>= 0`` if not strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if strict else value < 0):
        raise ValueError(f"{name}: must be a finite number {'>' if strict else '>='} 0, got {value!r}")


def check_finite(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")


def check_int(name: str, value: int, *, minimum: int = 0) -> None:
    """Raise ``ValueError`` unless ``value`` is an ``int >= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def check_choice(name: str, value: object, allowed: Iterable[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def require_rows(x: Tensor, attack: str, what: str = "honest", minimum: int = 1) -> None:
    """Raise ``ValueError`` unless ``x`` is a ``[rows, P]`` stack with at least ``minimum`` rows."""
    if x.dim() != 2 or x.shape[0] < minimum:
        raise ValueError(f"{attack}: needs at least {minimum} {what} vector(s) as a [rows, P] tensor, "
                         f"got shape {tuple(x.shape)}")


# --- statistics of a stack of vectors --------------------------------------------------------------


def mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinate-wise mean and standard deviation of ``x [m, P]``.

    The std is the unbiased (Bessel-corrected, ``torch.std``) estimate, as in the public
    re-implementations of ALIE and Min-Max/Min-Sum; with a single row it is ``0``.
    """
    mu = x.mean(dim=0)
    sigma = x.std(dim=0) if x.shape[0] > 1 else torch.zeros_like(mu)
    return mu, sigma


def repeat_rows(v: Tensor, k: int) -> Tensor:
    """``k`` independent copies of the vector ``v [P]`` as a ``[k, P]`` tensor."""
    return v.unsqueeze(0).repeat(k, 1)


def sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ``[|a|, |b|]`` between the rows of ``a`` and ``b``.

    Uses the exact difference formula (no ``|a|² + |b|² − 2ab`` cancellation), without
    materialising the ``[|a|, |b|, P]`` difference tensor.
    """
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square()


def krum_scores(x: Tensor, f: int) -> Tensor:
    """Krum scores (Blanchard et al., NeurIPS 2017) of the rows of ``x [n, P]``.

    ``score(i) = Σ_{j ∈ N_i} ‖x_i − x_j‖²`` over the ``n − f − 2`` rows closest to ``x_i``
    (``i`` excluded). Implemented here so that attacks never import ``strategies``.
    """
    return krum_scores_from_sq_dists(sq_dists(x, x), f)


def krum_scores_from_sq_dists(d: Tensor, f: int) -> Tensor:
    """:func:`krum_scores` from the ``[n, n]`` squared distance matrix ``d`` (not modified)."""
    n = d.shape[0]
    k = n - f - 2
    if k < 1:
        raise ValueError(f"Krum needs n - f - 2 >= 1 vectors, got n={n}, f={f}")
    d = d.clone()
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.sum(dim=1)


def krum_select(x: Tensor, f: int) -> int:
    """Index of the row Krum selects (the lowest score; ties go to the lowest index)."""
    return int(krum_scores(x, f).argmin())


# --- searches and constants --------------------------------------------------------------------------


def halving_search(feasible: Callable[[float], bool], gamma_init: float, tau: float) -> float:
    """Largest ``γ`` with ``feasible(γ)``, by the halving search of Shejwalkar & Houmansadr
    (NDSS 2021, Algorithm 1, as in the authors' code)::

        γ ← γ_init; step ← γ_init; γ_succ ← 0
        while |γ_succ − γ| > τ:
            if feasible(γ): γ_succ ← γ; γ ← γ + step/2
            else:           γ ← γ − step/2
            step ← step/2
        return γ_succ

    For a feasible set ``[0, γ*]`` with ``γ* < 2·γ_init`` the result is within ``τ`` of ``γ*``
    from below; if even tiny ``γ`` fail the result is ``0``.
    """
    gamma, step, succ = float(gamma_init), float(gamma_init), 0.0
    while abs(succ - gamma) > tau:
        if feasible(gamma):
            succ = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succ


def alie_z(n: int, f: int) -> float:
    """ALIE's ``z_max`` (Baruch et al., NeurIPS 2019, Algorithm 3).

    ``s = ⌊n/2 + 1⌋ − f`` workers must be won over ("supporters"); ``z_max = Φ⁻¹((n − s)/n)``
    with ``Φ`` the standard normal CDF. ``n=10, f=2`` gives ``s=4`` and ``z = Φ⁻¹(0.6) ≈ 0.2533``.
    """
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n if n > 0 else 0.0
    if not 0.0 < p < 1.0:
        raise ValueError(f"alie: z_max is undefined for ctx.n={n}, ctx.f={f} "
                         f"(needs 0 < (n - s)/n < 1 with s = floor(n/2 + 1) - f); pass z explicitly")
    return NormalDist().inv_cdf(p)


def sample(kind: str, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``"normal"`` N(0, 1) or ``"uniform"`` U[0, 1) samples of ``shape``, drawn on the generator's
    device (so a CPU generator works for CUDA vectors) and returned with ``like``'s dtype/device."""
    device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.randn if kind == "normal" else torch.rand
    return draw(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)
