"""Evaluating an unlearned output layer (:mod:`attacks.probes.unlearning`): accuracies and
membership-inference advantages of a model, and the before / after / retrained report."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from attacks.probes._head import accuracy, ce_losses, head_logits
from attacks.probes._records import Record
from attacks.probes.mia import ShadowSet, lira_offline_mia, loss_threshold_mia
from attacks.probes.unlearning import Dataset
from attacks.probes.unlearning_trace import UnlearningTrace


@dataclass
class ModelEvaluation(Record):
    """One model's numbers in an unlearning report.

    Attributes:
        forget_accuracy, retain_accuracy, test_accuracy: top-1 accuracy on each set.
        forget_loss, heldout_loss: mean cross-entropy on the forget / held-out sets.
        mia_advantage: loss-threshold MIA advantage, forget (members) vs held-out (non-members).
        lira_advantage, lira_auc: offline LiRA on the same split (``None`` without shadows).
    """

    forget_accuracy: float
    retain_accuracy: float
    test_accuracy: float
    forget_loss: float
    heldout_loss: float
    mia_advantage: float
    lira_advantage: float | None = None
    lira_auc: float | None = None


@dataclass
class UnlearningReport(Record):
    """Before / after unlearning, and the gold standard "retrained without the peer".

    ``after_minus_retrained`` holds ``after − retrained`` for every metric (empty without a
    retrained model): close to 0 means the unlearning matched retraining.
    """

    before: ModelEvaluation
    after: ModelEvaluation
    retrained: ModelEvaluation | None
    after_minus_retrained: dict[str, float]
    trace: UnlearningTrace | None = None


def _infer_shape(params: Tensor, d: int, layer_shape: tuple[int, int] | None, bias: bool) -> tuple[int, int]:
    if layer_shape is not None:
        return layer_shape
    p = params.shape[-1]
    per_class = d + 1 if bias else d
    if p % per_class:
        raise ValueError(f"cannot infer the layer shape from {p} params and d={d}; pass layer_shape")
    return (p // per_class, d)


def evaluate_model(
    params: Tensor,
    forget: Dataset,
    retain: Dataset,
    test: Dataset,
    heldout: Dataset,
    *,
    layer_shape: tuple[int, int],
    bias: bool = True,
    shadows: ShadowSet | None = None,
) -> ModelEvaluation:
    """Accuracies, losses and MIA advantages of one head (see :class:`ModelEvaluation`)."""
    def run(ds: Dataset) -> tuple[Tensor, Tensor]:
        x, y = ds
        z = head_logits(params, x.to(torch.float64), layer_shape, bias)
        return z, y

    zf, yf = run(forget)
    zr, yr = run(retain)
    zt, yt = run(test)
    zh, yh = run(heldout)
    lf, lh = ce_losses(zf, yf), ce_losses(zh, yh)
    lira_adv = lira_auc = None
    if shadows is not None:
        res = lira_offline_mia(params, shadows, forget[0], forget[1], heldout[0], heldout[1])
        lira_adv, lira_auc = res.advantage, res.auc
    return ModelEvaluation(
        forget_accuracy=accuracy(zf, yf),
        retain_accuracy=accuracy(zr, yr),
        test_accuracy=accuracy(zt, yt),
        forget_loss=float(lf.mean()),
        heldout_loss=float(lh.mean()),
        mia_advantage=loss_threshold_mia(lf, lh),
        lira_advantage=lira_adv,
        lira_auc=lira_auc,
    )


def evaluate_unlearning(
    before: Tensor,
    after: Tensor,
    retrained: Tensor | None,
    forget: Dataset,
    retain: Dataset,
    test: Dataset,
    heldout: Dataset,
    *,
    layer_shape: tuple[int, int] | None = None,
    bias: bool = True,
    shadows: ShadowSet | None = None,
    trace: UnlearningTrace | None = None,
) -> UnlearningReport:
    """Evaluate the original, unlearned and (optional) retrained heads on the same splits.

    Args:
        before, after, retrained: heads ``[P]``; ``retrained`` is the model trained without the
            forgotten peer (supplied by the caller), or ``None``.
        forget: the forgotten data ``(x, y)`` (members of ``before``'s training set).
        retain: training data that stays. test: the test split. heldout: data no model
            trained on (the MIA's non-members; use a split disjoint from the unlearning
            reference set for an unbiased advantage).
        layer_shape: ``(C, d)``; inferred from ``before.shape`` and ``d`` when omitted.
        shadows: shadow heads for offline LiRA (:func:`train_shadow_heads`); LiRA skipped if
            ``None``.
        trace: the :class:`UnlearningTrace` to attach.
    """
    shape = _infer_shape(before, forget[0].shape[-1], layer_shape, bias)

    def ev(p: Tensor) -> ModelEvaluation:
        return evaluate_model(p, forget, retain, test, heldout, layer_shape=shape, bias=bias, shadows=shadows)

    b, a = ev(before), ev(after)
    r = ev(retrained) if retrained is not None else None
    diff: dict[str, float] = {}
    if r is not None:
        for k, v in a.to_dict().items():
            rv = getattr(r, k)
            if v is not None and rv is not None:
                diff[k] = float(v) - float(rv)
    return UnlearningReport(before=b, after=a, retrained=r, after_minus_retrained=diff, trace=trace)
