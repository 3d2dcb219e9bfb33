"""Stage 2 of the cloning attack (:mod:`attacks.probes.cloning`): distillation of a student from
leaked outputs (values or labels) on unlabelled public features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.probes._head import train_heads
from attacks.probes._records import Record
from attacks.probes.oracles import CountingOracle, Oracle, dense_from_topk

# ---------------------------------------------------------------------------- distillation


@dataclass
class DistillInfo(Record):
    """How a student was distilled.

    Attributes:
        queries: oracle rows used. k: classes per answer.
        targets: ``"soft_full"``, ``"soft_topk"`` (softmax renormalised over the top-``k``) or
            ``"labels"``.
        temperature, epochs: training settings.
    """

    queries: int
    k: int
    targets: str
    temperature: float
    epochs: int


def distill_from_outputs(
    x: Tensor,
    indices: Tensor,
    values: Tensor,
    num_classes: int,
    *,
    bias: bool = True,
    targets: str = "auto",
    temperature: float = 1.0,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
) -> tuple[Tensor, str]:
    """Train a student head on ``x`` from already-leaked outputs → ``(params [P], target kind)``.

    Soft targets (values leaked, ``k > 1``): ``p = softmax(v/T)`` over the returned classes (the
    others get probability 0; exact teacher probabilities when ``k = C``), loss
    ``−Σ_c p_c log softmax(z_s)_c`` (= KL up to a constant); the trained student is multiplied
    by ``T`` so its logits estimate the teacher's. Labels (``k = 1`` or no values):
    cross-entropy on ``indices[:, 0]``.
    """
    k = indices.shape[1]
    use_soft = (targets in {"auto", "soft"}) and k > 1 and bool(torch.isfinite(values).all())
    if targets == "soft" and not use_soft:
        raise ValueError("soft targets need k > 1 finite values")
    xd = x.detach()
    if use_soft:
        dense = dense_from_topk(indices, values.to(xd.dtype) / temperature, num_classes)
        probs = torch.softmax(torch.nan_to_num(dense, nan=float("-inf")), dim=-1)
        student = train_heads(xd, num_classes, soft_targets=probs, bias=bias, epochs=epochs, lr=lr,
                              weight_decay=weight_decay)[0] * temperature
        return student, ("soft_full" if k >= num_classes else "soft_topk")
    student = train_heads(xd, num_classes, y=indices[:, 0], bias=bias, epochs=epochs, lr=lr,
                          weight_decay=weight_decay)[0]
    return student, "labels"


def distill_student(
    teacher_oracle: Oracle,
    public_x: Tensor,
    num_classes: int,
    *,
    bias: bool = True,
    targets: str = "auto",
    temperature: float = 1.0,
    epochs: int = 300,
    lr: float = 0.05,
    weight_decay: float = 0.0,
) -> tuple[Tensor, DistillInfo]:
    """Query the teacher once on unlabelled public features and distill a student head.

    ``targets``: ``"auto"`` (soft when values leak, else labels), ``"soft"`` or ``"labels"``.
    Returns ``(student params [P], DistillInfo)``.
    """
    counter = CountingOracle(teacher_oracle)
    idx, vals = counter(public_x, None)
    student, kind = distill_from_outputs(public_x, idx, vals, num_classes, bias=bias, targets=targets,
                                         temperature=temperature, epochs=epochs, lr=lr,
                                         weight_decay=weight_decay)
    return student, DistillInfo(counter.count, int(idx.shape[1]), kind, temperature, epochs)
