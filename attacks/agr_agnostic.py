"""Min-Max and Min-Sum, the AGR-agnostic attacks of Shejwalkar & Houmansadr (NDSS 2021).

Both send ``∇m = μ + γ · ∇p`` where ``μ`` is the mean of the honest vectors and ``∇p`` a fixed
perturbation direction, and choose the largest ``γ`` for which ``∇m`` still "looks honest":

* ``perturbation="unit_vec"``: ``∇p = −μ / ‖μ‖``  (inverse unit vector)
* ``perturbation="sign"``:     ``∇p = −sign(μ)``  (inverse sign)
* ``perturbation="std"``:      ``∇p = −σ``        (inverse coordinate-wise std, unbiased)

``γ`` comes from the paper's halving search (Algorithm 1, ``γ_init = gamma_init``,
threshold ``τ = tau``; see :func:`attacks._math.halving_search`), which explores ``[0, 2·γ_init)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks._math import (
    halving_search,
    mean_std,
    repeat_rows,
    require_rows,
)
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.distances import sq_dists
from fedlib.params import Options, Real, param

PERTURBATIONS = ("unit_vec", "sign", "std")


def perturbation_direction(honest: Tensor, kind: str) -> Tensor:
    """``∇p`` of the paper for ``kind`` in ``PERTURBATIONS`` (zero if ``μ`` is zero for unit_vec)."""
    mu, sigma = mean_std(honest)
    if kind == "unit_vec":
        norm = mu.norm()
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    return -sigma


@dataclass
class _AGRAgnostic(UpdateForger):
    """Shared fields and search; subclasses define the "looks honest" test."""

    omniscient = True

    perturbation: str = param("unit_vec", Options(choices=PERTURBATIONS))
    gamma_init: float = param(10.0, Real(lo=0, lo_open=True))
    tau: float = param(1e-5, Real(lo=0, lo_open=True))

    def _bound(self, honest_sq_dists: Tensor) -> Tensor:
        """The threshold, from the ``[m, m]`` squared distances among honest vectors."""
        raise NotImplementedError

    def _value(self, candidate_sq_dists: Tensor) -> Tensor:
        """The statistic of a candidate, from its ``[m]`` squared distances to the honest ones."""
        raise NotImplementedError

    def search(self, honest: Tensor) -> tuple[float, Tensor, Tensor]:
        """``(γ, μ, ∇p)``: the halving search's ``γ`` for these honest vectors, and ``μ``, ``∇p``."""
        require_rows(honest, self.name)
        mu = honest.mean(dim=0)
        p = perturbation_direction(honest, self.perturbation)
        bound = self._bound(sq_dists(honest, honest))

        def feasible(g: float) -> bool:
            return bool(self._value(sq_dists((mu + g * p)[None], honest)[0]) <= bound)

        return halving_search(feasible, self.gamma_init, self.tau), mu, p

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        g, mu, p = self.search(honest)
        return repeat_rows(mu + g * p, own.shape[0])


@register("min_max")
@dataclass
class MinMax(_AGRAgnostic):
    """Min-Max (Shejwalkar & Houmansadr): ``μ + γ·∇p``, largest ``γ`` with max distance ≤ honest max.

    ``γ`` is the largest the search finds with ``max_i ‖∇m − ∇_i‖ ≤ max_{i,j} ‖∇_i − ∇_j‖``
    (its farthest honest vector is no farther than the two farthest honest vectors are from
    each other).

    Shejwalkar & Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning Attacks and
    Defenses for Federated Learning", NDSS 2021, Eq. (6). Omniscient: ``honest`` must hold the
    honest vectors of the round (the paper's full-knowledge setting). The paper perturbs
    updates; with model exchange ``μ``, ``σ`` and the distances are those of the models. All
    ``k`` rows are equal.
    """

    def _bound(self, honest_sq_dists: Tensor) -> Tensor:
        return honest_sq_dists.max()

    def _value(self, candidate_sq_dists: Tensor) -> Tensor:
        return candidate_sq_dists.max()


@register("min_sum")
@dataclass
class MinSum(_AGRAgnostic):
    """Min-Sum (Shejwalkar & Houmansadr): ``μ + γ·∇p``, largest ``γ`` with sum of sq. distances ≤ bound.

    ``γ`` is the largest the search finds with ``Σ_i ‖∇m − ∇_i‖² ≤ bound``, where
    ``bound = max_i Σ_j ‖∇_i − ∇_j‖²`` (``score="max"``, the paper's Eq. (7)) or
    ``bound = min_i Σ_j ‖∇_i − ∇_j‖²`` (``score="min"``, the authors' released code).

    Shejwalkar & Houmansadr, NDSS 2021. Omniscient: ``honest`` must hold the honest vectors of
    the round. With model exchange the sums are over models. All ``k`` rows are equal.
    """

    score: str = param("max", Options(choices=("max", "min")))

    def _bound(self, honest_sq_dists: Tensor) -> Tensor:
        sums = honest_sq_dists.sum(dim=1)
        return sums.max() if self.score == "max" else sums.min()

    def _value(self, candidate_sq_dists: Tensor) -> Tensor:
        return candidate_sq_dists.sum()
