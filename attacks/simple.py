"""Non-omniscient forgers that need no knowledge of the honest peers: sign flipping and noise."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from attacks._math import sample
from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.params import Options, Real, param


@register("sign_flip")
@dataclass
class SignFlip(UpdateForger):
    """Sign flipping: each Byzantine peer sends ``−s · own`` (``s = scale``, default 1).

    The "sign flipping attack" of Damaskinos et al. (AggregaThor, SysML 2019) and Allen-Zhu et
    al. (ICLR 2021), called bit flipping by Karimireddy/He et al. Not omniscient: it only uses
    the peer's own benign-trained vector. With model exchange the flipped vector is the model
    (not an update), as in He et al.'s decentralized code.
    """

    reads_honest = False  # only own

    scale: float = param(1.0, Real(lo=0, lo_open=True))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        return -self.scale * own


@register("gaussian")
@dataclass
class Gaussian(UpdateForger):
    """Random vectors: i.i.d. Gaussian ``N(mean, std²)`` or uniform ``U[−scale, scale]`` entries.

    * ``mode="gaussian"``: every entry ``~ N(mean, std²)`` i.i.d. (the Gaussian attack of
      Blanchard et al., NeurIPS 2017, and Fang et al., USENIX Security 2020). Blanchard et al.
      draw their Gaussian Byzantine vectors with standard deviation 200 (``std: 200``); the
      default ``std = 1`` is ByzFL's ``Gaussian``. With model exchange the entries replace
      model parameters, not gradients.
    * ``mode="random"``: random matrices with entries ``~ U[−scale, scale]`` i.i.d. (Bristle's
      "random" Byzantine peers).

    Draws from ``ctx.generator`` (a seeded generator makes the attack reproducible); each of the
    ``k`` Byzantine peers gets its own independent row.
    """

    reads_honest = False  # own gives only the shape, dtype and device

    mode: str = param("gaussian", Options(choices=("gaussian", "random")))
    mean: float = param(0.0, Real())
    std: float = param(1.0, Real(lo=0))
    scale: float = param(1.0, Real(lo=0))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        if self.mode == "gaussian":
            return self.mean + self.std * sample("normal", tuple(own.shape), own, ctx.generator)
        return self.scale * (2 * sample("uniform", tuple(own.shape), own, ctx.generator) - 1)
