"""Faulty behaviours rather than optimised attacks: silence, stale, non-finite or malformed messages.

None of them is omniscient. The engine must cope with what they send: ``None`` (no message),
rows with NaN/Inf and tensors of the wrong width are dropped (``fedsim.messages.forged_rows``,
``strategies.base.sanitize``); crash, nan and wrong_shape say so (``malformed = True``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import AttackContext, UpdateForger
from attacks.registry import register
from fedlib.params import Integer, Options, param


@register("crash")
@dataclass
class Crash(UpdateForger):
    """Crash failure: the Byzantine peers stay silent (``forge`` returns ``None``)."""

    malformed = True  # its messages are dropped on purpose
    silent = True  # it sends nothing: no bytes counted for its peers
    reads_honest = False

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> None:
        return None


@register("stale")
@dataclass
class Stale(UpdateForger):
    """Stale model: at round ``r`` send the model held at round ``r − delay``, else ``own``.

    Keeping the history is the engine's job: ``lookback = delay``, so it keeps the Byzantine
    peers' last ``delay`` benign-trained vectors (a bounded history, only for this forger) and
    passes as ``ctx.previous`` the ``[k, P]`` vectors of round ``r − delay``. In the first
    ``delay`` rounds no such model exists and the peers send their current ``own`` vectors.
    ``delay = 1``: always one round behind.
    """

    reads_honest = False  # own and ctx.previous

    delay: int = param(1, Integer(minimum=1))

    @property
    def lookback(self) -> int:
        return self.delay

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        if ctx.previous is None:
            return own.clone()
        if ctx.previous.shape != own.shape:
            raise ValueError(
                f"{self.name}: ctx.previous must have the shape of own {tuple(own.shape)}, "
                f"got {tuple(ctx.previous.shape)}"
            )
        return ctx.previous.clone()


@register("nan")
@dataclass
class NonFinite(UpdateForger):
    """Non-finite messages: every row is full of ``value`` (``"nan"``, ``"inf"`` or ``"-inf"``)."""

    malformed = True  # its messages are dropped on purpose
    reads_honest = False

    value: str = param("nan", Options(choices=("nan", "inf", "-inf")))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        return torch.full_like(own, float(self.value))


@register("wrong_shape")
@dataclass
class WrongShape(UpdateForger):
    """Malformed messages: the last dimension is ``P + delta`` instead of ``P``.

    ``delta = +1`` appends a zero to each row of ``own``, ``delta = −1`` drops its last entry.
    """

    malformed = True  # its messages are dropped on purpose
    reads_honest = False  # own

    delta: int = param(1, Options(choices=(1, -1)))

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor:
        if self.delta > 0:
            return torch.cat([own, own.new_zeros(own.shape[0], 1)], dim=1)
        return own[:, :-1].clone()
