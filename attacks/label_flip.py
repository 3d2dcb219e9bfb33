"""Label-flipping data poisoners: a Byzantine peer trains honestly on wrongly labelled data.

All three read the number of classes ``C`` from ``AttackContext.num_classes`` (must be > 0),
leave the features ``x`` untouched and return a new label tensor (the input is not modified).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.base import AttackContext, DataPoisoner
from attacks.registry import register
from fedlib.params import Integer, param


def _checked_labels(y: Tensor, ctx: AttackContext, attack: str, *classes: tuple[str, int]) -> int:
    """Validate ``y`` (integer labels in ``[0, C)``) and the class parameters; return ``C``."""
    c = ctx.num_classes
    if c <= 0:
        raise ValueError(f"{attack}: ctx.num_classes must be > 0, got {c}")
    for name, value in classes:
        if value >= c:
            raise ValueError(f"{attack}: {name} must be < num_classes={c}, got {value}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"{attack}: labels must be an integer tensor, got {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"{attack}: labels must lie in [0, {c}), got range [{int(y.min())}, {int(y.max())}]")
    return c


@register("label_shift")
@dataclass
class LabelShift(DataPoisoner):
    """Shift every label: ``y ← (y + shift) mod C`` (Bristle's "all labels shifted by one").

    Verbraeken, de Vos, Pouwelse, "Bristle: Decentralized Federated Learning in Byzantine,
    Non-i.i.d. Environments", arXiv 2110.11006, 2021 (label-flipping attack, first variant,
    ``shift = 1``).
    """

    shift: int = param(1, Integer(minimum=1))

    def poison(self, x: Tensor, y: Tensor, ctx: AttackContext) -> tuple[Tensor, Tensor]:
        c = _checked_labels(y, ctx, self.name)
        return x, (y + self.shift) % c


@register("label_swap")
@dataclass
class LabelSwap(DataPoisoner):
    """Swap two classes: ``a ↔ b``, other labels unchanged (Bristle's second label-flipping variant).

    Verbraeken, de Vos, Pouwelse, "Bristle", arXiv 2110.11006, 2021.
    """

    a: int = param(0, Integer(minimum=0))
    b: int = param(1, Integer(minimum=0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.a == self.b:
            raise ValueError(f"b: must differ from a (both are {self.a})")

    def poison(self, x: Tensor, y: Tensor, ctx: AttackContext) -> tuple[Tensor, Tensor]:
        _checked_labels(y, ctx, self.name, ("a", self.a), ("b", self.b))
        out = torch.where(y == self.a, self.b, y)
        return x, torch.where(y == self.b, self.a, out)


@register("targeted_label_flip")
@dataclass
class TargetedLabelFlip(DataPoisoner):
    """Targeted flip: every ``source`` label becomes ``target``; others unchanged.

    Tolpegin, Truex, Gursoy, Liu, "Data Poisoning Attacks Against Federated Learning Systems",
    ESORICS 2020.
    """

    source: int = param(0, Integer(minimum=0))
    target: int = param(1, Integer(minimum=0))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == self.target:
            raise ValueError(f"target: must differ from source (both are {self.source})")

    def poison(self, x: Tensor, y: Tensor, ctx: AttackContext) -> tuple[Tensor, Tensor]:
        _checked_labels(y, ctx, self.name, ("source", self.source), ("target", self.target))
        return x, torch.where(y == self.source, self.target, y)
