"""Inner product manipulation (IPM): send a small negative multiple of the honest mean."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks._math import repeat_rows, require_rows
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.params import Real, param


@register("ipm")
@dataclass
class IPM(UpdateForger):
    """IPM: every Byzantine peer sends ``−ε · mean(honest)`` (``ε = eps``, default 0.1).

    Xie, Koyejo, Gupta, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner Product
    Manipulation", UAI 2019: with small ``ε`` the inner product of the aggregate with the true
    gradient turns negative while the forged vectors stay close to the honest ones. Some
    libraries write it ``ε · (−mean)``; it is the same vector.

    Omniscient: ``honest`` must hold the honest vectors of the round. The paper works on
    gradients; with model exchange the mean is that of the models and the forged vector is a
    shrunken, sign-flipped model (as in He et al.'s decentralized IPM), i.e. much farther from
    the honest vectors than the paper's small gradient perturbation.
    """

    omniscient = True

    eps: float = param(0.1, Real(lo=0, lo_open=True))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        require_rows(honest, self.name)
        return repeat_rows(-self.eps * honest.mean(dim=0), own.shape[0])
