"""What the unlearning ascent did (:func:`attacks.probes.unlearn_gradient_ascent`, module
:mod:`attacks.probes.unlearning`): its :class:`UnlearningTrace` record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attacks.probes._records import Record, to_plain


@dataclass
class UnlearningTrace(Record):
    """What the ascent did.

    Attributes:
        mode: where the ascent directions came from: ``"first_epoch"`` (first pass at the
            trained model), ``"first_epoch_initial"`` (``initial_params``), ``"recorded"``
            (``recorded_gradients``) or ``"iterative"``.
        criterion: ``"loss"``, ``"accuracy"``, ``"either"`` or ``"membership"``.
        steps: ascent steps taken (the last one possibly partial, see ``final_fraction``).
        gradient_evaluations: forget-set gradients computed (replayed ones not counted).
        final_fraction: fraction ``α`` of the last step kept by the calibration (1.0 = whole).
        bisections: bisection iterations spent calibrating the last step.
        calibrated: whether the stopping criterion was met (``False``: ``max_steps`` ran out).
        stop_reason: ``"already_calibrated"``, ``"loss_reached_reference"``,
            ``"accuracy_reached_reference"``, ``"membership_at_null"`` or ``"max_steps"``.
        tol: loss tolerance of the calibration.
        alpha: level of the membership criterion's null threshold ``c_α``.
        forget_loss, reference_loss, forget_accuracy, reference_accuracy: per full step,
            index 0 is the starting model (the last entry is the calibrated final model). The
            reference numbers are the current model's (with ``fixed_reference`` the target was
            the original model's, i.e. entry 0).
        statistic, threshold: ``D⁺`` and ``c_α`` per full step like the losses (membership
            criterion; empty otherwise).
        path: every ``path_every`` steps (see the module docstring), ``[]`` when not recorded.

    ``to_dict()`` adds ``final_forget_loss``/``final_reference_loss``/``final_forget_accuracy``/
    ``final_reference_accuracy``.
    """

    mode: str
    criterion: str
    steps: int
    gradient_evaluations: int
    final_fraction: float
    bisections: int
    calibrated: bool
    stop_reason: str
    tol: float
    forget_loss: list[float]
    reference_loss: list[float]
    forget_accuracy: list[float]
    reference_accuracy: list[float]
    alpha: float = 0.05
    statistic: list[float] = field(default_factory=list)
    threshold: list[float] = field(default_factory=list)
    path: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_forget_loss(self) -> float:
        return self.forget_loss[-1]

    @property
    def final_reference_loss(self) -> float:
        return self.reference_loss[-1]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update(final_forget_loss=self.forget_loss[-1], final_reference_loss=self.reference_loss[-1],
                   final_forget_accuracy=self.forget_accuracy[-1],
                   final_reference_accuracy=self.reference_accuracy[-1])
        return to_plain(out)
