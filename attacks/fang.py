"""Full-knowledge local model poisoning attacks of Fang, Cao, Jia, Gong (USENIX Security 2020),
"Local Model Poisoning Attacks to Byzantine-Robust Federated Learning".

Both push against the estimated change direction ``s = sign(μ)`` of the honest vectors
(``μ`` = their coordinate-wise mean). ``fang_krum`` also needs the reference ``w_ref`` that
its forged vector ``w_ref − λ·s`` starts from:

* Exchanging **updates/gradients** (``reference="zero"``, ``w_ref = 0``), ``μ`` is the mean update and
  ``sign(μ)`` its direction — exactly the gradient form of the attacks in the authors' and
  Shejwalkar & Houmansadr's code.
* Exchanging **models** (``reference="mean"``, the default, fedsim's setting), the pre-round
  global model ``w_Re`` of the paper does not exist (every peer has its own), so the attack
  uses ``w_ref = μ`` (the model the victims would reach without attack) and ``s = sign(μ)``,
  the direction the head's parameters moved since a zero initialisation. For model vectors
  this drives each coordinate against its sign, i.e. towards and through zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from attacks._math import (
    repeat_rows,
    require_rows,
    sample,
)
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.distances import krum_scores, sq_dists
from fedlib.params import Options, Real, param


def krum_lambda_bound(honest: Tensor, reference: Tensor, n: int, f: int,
                      honest_sq_dists: Tensor | None = None) -> float:
    """Fang et al.'s upper bound on ``λ`` (Section 3.3, full knowledge)::

        λ ≤ 1/((n − 2f − 1)·√d) · min_i Σ_{l ∈ Γ_i} ‖w_l − w_i‖  +  1/√d · max_i ‖w_i − w_ref‖

    over honest ``i``, with ``Γ_i`` the ``n − f − 2`` honest vectors closest to ``w_i`` and ``d``
    the dimension. The first term is dropped when ``n − 2f − 1 ≤ 0`` or ``n − f − 2 ≤ 0``
    (Krum is then outside its guarantees) or fewer honest neighbours exist.
    ``honest_sq_dists`` may pass the ``[m, m]`` squared distances when already computed.
    """
    m, d = honest.shape
    root_d = math.sqrt(d)
    far = float((honest - reference).norm(dim=1).max()) / root_d
    k = n - f - 2
    if n - 2 * f - 1 <= 0 or k < 1 or k > m - 1:
        return far
    dist = (sq_dists(honest, honest) if honest_sq_dists is None else honest_sq_dists).sqrt()
    dist.fill_diagonal_(float("inf"))
    near = float(dist.topk(k, dim=1, largest=False).values.sum(dim=1).min())
    return near / ((n - 2 * f - 1) * root_d) + far


@register("fang_krum")
@dataclass
class FangKrum(UpdateForger):
    """Fang's full-knowledge attack on Krum: ``w' = w_ref − λ·s``, ``s = sign(μ)``.

    ``λ`` starts at :func:`krum_lambda_bound` and is halved until Krum, run locally over the
    honest vectors followed by the ``k`` forged copies (Krum's ``f = ctx.f``), selects a forged
    one, or ``λ`` falls below ``threshold`` (then that last, tiny ``λ`` is used). ``w_ref`` is
    ``μ`` (``reference="mean"``, model exchange) or ``0`` (``reference="zero"``, update
    exchange; see the module docstring). ``n`` in the bound is ``m + k`` (the vectors Krum sees).

    Fang et al., USENIX Security 2020, Section 3.3. Omniscient: ``honest`` must hold the honest
    vectors of the round. Deviation: the paper's other ``c − 1`` compromised models are within
    ``ε`` of ``w'``; here all ``k`` rows equal ``w'`` (``ε = 0``), as in common re-implementations.
    Krum's ties go to the lowest index, i.e. to an honest vector, so a forged one must win strictly.
    """

    omniscient = True

    reference: str = param("mean", Options(choices=("mean", "zero")))
    threshold: float = param(1e-5, Real(lo=0, lo_open=True))

    def search(self, honest: Tensor, k: int, f: int) -> tuple[float, Tensor]:
        """``(λ, w')``: the ``λ`` the halving search stops at and the crafted vector."""
        require_rows(honest, self.name)
        m = honest.shape[0]
        mu = honest.mean(dim=0)
        ref = mu if self.reference == "mean" else torch.zeros_like(mu)
        s = torch.sign(mu)
        d_hh = sq_dists(honest, honest)
        lam = krum_lambda_bound(honest, ref, m + k, f, d_hh)
        if not math.isfinite(lam):
            raise ValueError(f"{self.name}: honest vectors must be finite")
        if k < 1 or m + k - f - 2 < 1:  # Krum undefined for this many vectors: nothing to search
            return lam, ref - lam * s
        d = torch.zeros(m + k, m + k, dtype=honest.dtype, device=honest.device)
        d[:m, :m] = d_hh  # the k forged copies are 0 apart from each other
        while True:
            crafted = ref - lam * s
            d_ch = sq_dists(crafted[None], honest)[0]
            d[m:, :m], d[:m, m:] = d_ch, d_ch[:, None]
            if lam < self.threshold or int(krum_scores(d, f).argmin()) >= m:
                return lam, crafted
            lam /= 2

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        k = own.shape[0]
        _, crafted = self.search(honest, k, ctx.f)
        return repeat_rows(crafted, k)


@register("fang_trimmed_mean")
@dataclass
class FangTrimmedMean(UpdateForger):
    """Fang's full-knowledge attack on trimmed mean / median: coordinates beyond the honest range.

    Every forged coordinate lies beyond the honest range, against ``s_j = sign(μ_j)``.

    With ``w_max,j``/``w_min,j`` the honest max/min of coordinate ``j`` and ``b > 1``:

    * ``s_j > 0`` (push down): uniform in ``[w_min,j / b, w_min,j]`` if ``w_min,j > 0``,
      else in ``[b · w_min,j, w_min,j]``;
    * ``s_j ≤ 0`` (push up): uniform in ``[w_max,j, b · w_max,j]`` if ``w_max,j > 0``,
      else in ``[w_max,j / b, w_max,j]``.

    Fang et al., USENIX Security 2020, Section 3.4 (``b = 2`` in the paper). Each of the ``k``
    rows is drawn independently from ``ctx.generator``. The paper writes it for model
    parameters with ``s`` the model's change direction; written for gradients with
    ``s = sign(mean gradient)`` it is the same rule (push against ``s``), so it applies to the
    vectors as given (no reference vector is needed: the intervals depend only on the honest
    range). ``s_j = 0`` pushes up. Omniscient: ``honest`` must hold the honest vectors of the round.
    """

    omniscient = True

    b: float = param(2.0, Real(lo=1, lo_open=True))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        require_rows(honest, self.name)
        w_max, w_min = honest.max(dim=0).values, honest.min(dim=0).values
        down = torch.sign(honest.mean(dim=0)) > 0
        edge = torch.where(down, w_min, w_max)
        # The far end of the interval: ×b when it moves away from the range, ÷b otherwise.
        away = (edge > 0) != down
        far = torch.where(away, edge * self.b, edge / self.b)
        u = sample("uniform", (own.shape[0], edge.shape[0]), honest, ctx.generator)
        return edge + u * (far - edge)
