"""A Little Is Enough (ALIE): a small, coordinate-wise shift hidden inside the honest spread."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks._math import alie_z, mean_std, repeat_rows, require_rows
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.params import Real, param


@register("alie")
@dataclass
class ALIE(UpdateForger):
    """ALIE: every Byzantine peer sends ``p_j = μ_j − z · σ_j`` for each coordinate ``j``.

    Baruch, Baruch, Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019 (Algorithm 3). ``μ`` and ``σ`` are the coordinate-wise mean and
    (unbiased) standard deviation of ``honest``; ``z`` defaults to the paper's
    ``z_max = Φ⁻¹((n − s)/n)`` with ``s = ⌊n/2 + 1⌋ − f`` (``n = ctx.n``, ``f = ctx.f_received``), e.g.
    ``z ≈ 0.2533`` for ``n = 10, f = 2``; set ``z`` to override. In the paper the server
    aggregates all ``n`` workers; a decentralized victim aggregates its in-neighbours, so ``n``
    and ``f`` are the victim's (:class:`~attacks.base.AttackContext`), not the population's.

    Not omniscient (``omniscient = False``): in the paper the attackers estimate ``μ, σ`` from
    their own benign data, so ``honest`` is whatever the engine passes — the honest vectors of
    the round when the scenario grants omniscience, otherwise the Byzantine peers' own
    benign-trained vectors. The paper perturbs gradients; with model exchange ``μ`` and ``σ``
    are those of the models, as in He et al.'s decentralized ALIE. All ``k`` rows are equal.
    """

    z: float | None = param(None, Real(null=True))

    reads_f = True  # z_max from ctx.f_received

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.z is not None:  # z given: f_received is not read
            self.reads_f = False

    def check(self, n: int, f_received: int) -> None:
        if self.z is None:
            alie_z(n, f_received)

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        require_rows(honest, self.name)
        f = ctx.f if ctx.f_received is None else ctx.f_received
        z = self.z if self.z is not None else alie_z(ctx.n, f)
        mu, sigma = mean_std(honest)
        return repeat_rows(mu - z * sigma, own.shape[0])
