"""Shared math of the attacks (private: the API is the registry).

Everything here is pure torch (plus :mod:`statistics` for the normal quantile) and works on
``[rows, P]`` stacks of flattened vectors. What attacks share with the rules (squared distances,
the Krum kernel, the head layout, parameter constraints) is in the leaf :mod:`fedlib`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

import torch
from torch import Tensor

# --- shapes -----------------------------------------------------------------------------------------


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
