"""The unlearning probe's methods (:func:`fedsim.probe_unlearning.run_unlearning`): the stopping
rule's reference, the gossip rollback, every unlearning method beside the calibrated ascent judged
against the retrained head, and the method chosen by :data:`SELECTION_RULE` without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attacks import probes as ap
from fedsim import canaries as canaries_mod
from fedsim.probe_context import _Ctx
from fedsim.probe_rollback import rollback_heads


@dataclass
class _StopRef:
    """The stopping rule's reference: the natural calibration split plus the calibration canaries
    (:func:`fedsim.canaries.stopping_reference`), and the strata that match it to the forget set
    (``forget_strata``/``reference_strata`` keyword arguments; empty: match on classes)."""

    x: Tensor
    y: Tensor
    strata: dict[str, Tensor]

    def statistic(self, forget_losses: Tensor, forget_y: Tensor, reference_losses: Tensor,
                  alpha: float) -> tuple[float, float]:
        """``(D⁺, c_α)`` as the ascent computes it with these keyword arguments."""
        k = self.strata
        return ap.stopping_statistic(forget_losses, k.get("forget_strata", forget_y), reference_losses,
                                     k.get("reference_strata", self.y), alpha, k.get("forget_groups"),
                                     k.get("reference_groups"))


def _stop_reference(cfg: dict[str, Any], ctx: _Ctx, peer: int, forget: tuple[Tensor, Tensor],
                    cal: tuple[Tensor, Tensor]) -> _StopRef:
    can = ctx.canaries if ctx.canaries is not None and ctx.canaries.peer == peer else None
    x, y, fs, rs = canaries_mod.stopping_reference(can, ctx.train_idx[peer], forget[1].numpy(), cal[0].numpy(),
                                                   cal[1].numpy(), ctx.num_classes)
    strata: dict[str, Tensor] = {}
    if fs is not None and rs is not None:
        strata = {"forget_strata": torch.from_numpy(fs), "reference_strata": torch.from_numpy(rs)}
        if cfg["stop_groups"] == "separate":  # canaries and natural data tested apart (Bonferroni α/2)
            strata |= {"forget_groups": strata["forget_strata"] // ctx.num_classes,
                       "reference_groups": strata["reference_strata"] // ctx.num_classes}
    return _StopRef(torch.from_numpy(x), torch.from_numpy(y), strata)


def _rollback(cfg: dict[str, Any], ctx: _Ctx, peer: int, target: int | str) -> tuple[Tensor | None, dict[str, Any]]:
    """The ``gossip_rollback`` head of ``target`` (:func:`fedsim.probe_rollback.rollback_heads`: the
    last ``rollback_rounds`` rounds' averages replayed without ``peer``'s messages). ``(None,
    {"skipped": why})`` when it cannot run (there, or the target is the global model)."""
    if target == "global" and min(cfg["rollback_rounds"], ctx.rounds) > 0:
        return None, {"skipped": "the target is the global model"}
    heads, info = rollback_heads(ctx, peer, cfg["rollback_rounds"])
    return (None if heads is None else heads[ctx.row(target)]), info


def _methods(cfg: dict[str, Any], ctx: _Ctx, before: Tensor, after: Tensor, retrained: Tensor | None,
             forget: tuple[Tensor, Tensor], retain: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor],
             cal: tuple[Tensor, Tensor], recorded: Tensor | None = None, stop: _StopRef | None = None,
             extra_splits: dict[str, Tensor] | None = None,
             rollback: tuple[Tensor | None, dict[str, Any]] | None = None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every unlearning method beside the gradient ascent, judged against the retrained head in
    function space (:mod:`attacks.probes.retrain_gap`): ``none`` (do nothing), ``gradient_ascent``
    (the probe's calibrated ascent), ``bias_only_ascent`` (the same ascent and stopping rule on the
    class biases only), ``finetune_retain``, ``newton`` (damped Newton/influence removal) and, when
    ``rollback`` holds a head, ``gossip_rollback`` (:func:`_rollback`).
    Without a retrained head only accuracies are reported. ``stop``: the membership rule's reference
    (default: the natural calibration split ``cal``); ``extra_splits``: more ``{name: features}`` to
    judge on (the forget set's natural examples and canaries)."""
    shape, bias = ctx.layer_shape, ctx.bias
    stop = stop or _StopRef(cal[0], cal[1], {})
    heads: dict[str, Tensor] = {"none": before, "gradient_ascent": after}
    info: dict[str, dict[str, Any]] = {}
    if bias:
        grads = recorded if recorded is not None else ap.ce_gradient(torch.zeros_like(before), forget[0], forget[1],
                                                                     shape, bias)[None]
        g0 = torch.stack([ap.bias_only(g, shape, bias) for g in grads])
        heads["bias_only_ascent"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], stop.x, stop.y, cfg["lr"], cfg["max_steps"],
            recorded_gradients=g0, tol=cfg["tol"], criterion=cfg["criterion"], alpha=cfg["alpha"], **stop.strata)
        info["bias_only_ascent"] = {"steps": tr.steps, "stop_reason": tr.stop_reason}
    heads["finetune_retain"] = ap.finetune_on_retain(before, shape, bias, retain, steps=cfg["finetune_steps"],
                                                     lr=cfg["finetune_lr"])
    info["finetune_retain"] = {"steps": cfg["finetune_steps"], "lr": cfg["finetune_lr"]}
    heads["newton"], info["newton"] = ap.newton_removal(before, shape, bias, forget, retain,
                                                        damping=cfg["newton_damping"], steps=cfg["newton_steps"])
    heads["newton_retain"], info["newton_retain"] = ap.newton_removal(
        before, shape, bias, forget, retain, damping=cfg["newton_damping"], steps=cfg["newton_steps"],
        target="retain_minimiser")
    # line search on the stopping statistic along the Newton removal direction: θ + s·(θ_newton − θ),
    # s on a grid of quarter steps up to newton_search_max, the crossing bisected (the ascent's machinery)
    direction = heads["newton"] - before
    quarter = float(direction.norm()) / 4
    if quarter > 0:
        heads["newton_calibrated"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], stop.x, stop.y, quarter, 4 * cfg["newton_search_max"],
            recorded_gradients=direction, criterion=cfg["criterion"], alpha=cfg["alpha"], tol=cfg["tol"],
            **stop.strata)
        info["newton_calibrated"] = {"multiple": (tr.steps - 1 + tr.final_fraction) / 4 if tr.steps else 0.0,
                                     "stop_reason": tr.stop_reason}
    if rollback is not None and rollback[0] is not None:  # the gossip rollback (_rollback)
        heads["gossip_rollback"] = rollback[0]
        info["gossip_rollback"] = rollback[1]
    if cfg["criterion"] != "loss":  # the mean-loss rule beside the chosen one (it stops at 0 steps with canaries)
        heads["ascent_loss_rule"], tr = ap.unlearn_gradient_ascent(
            before, shape, bias, forget[0], forget[1], cal[0], cal[1], cfg["lr"], cfg["max_steps"],
            mode=cfg["mode"], initial_params=torch.zeros_like(before), tol=cfg["tol"], recorded_gradients=recorded)
        info["ascent_loss_rule"] = {"steps": tr.steps, "stop_reason": tr.stop_reason}
    splits = {"forget": forget[0], "retain": retain[0], "test": test[0], **(extra_splits or {})}
    ref = None if retrained is None else ap.function_gap(retrained, before, splits, shape, bias)
    out: dict[str, Any] = {}
    for name, theta in heads.items():
        rec: dict[str, Any] = {
            "test_accuracy": ap.accuracy(ap.head_logits(theta, test[0], shape, bias), test[1]),
            "forget_accuracy": ap.accuracy(ap.head_logits(theta, forget[0], shape, bias), forget[1]),
            **info.get(name, {}),
        }
        if retrained is not None and ref is not None:
            gap = ap.function_gap(retrained, theta, splits, shape, bias)
            rec.update(gap, kl_gap_closed=ap.gap_closed(ref, gap))
        rec["selection"] = _selection_numbers(cfg, ctx, before, theta, forget, cal, stop)
        out[name] = rec
    return out, heads


SELECTION_RULE = ("among the methods (doing nothing included) whose forget-vs-calibration membership statistic D+ "
                  "is at its null level (D+ <= c_alpha) and whose calibration accuracy is within 1 point of the "
                  "trained head's, the one that moves the head's outputs least on the calibration split (smallest "
                  "KL(trained || method) there); stated before any run, uses no retrained model")


def _selection_numbers(cfg: dict[str, Any], ctx: _Ctx, before: Tensor, theta: Tensor,
                       forget: tuple[Tensor, Tensor], cal: tuple[Tensor, Tensor], stop: _StopRef) -> dict[str, float]:
    """What the unlearner itself can see of a method (no retrained model): the membership statistic
    ``D⁺`` and its threshold ``c_α`` (forget vs the stopping reference ``stop``), accuracy and the
    output change ``KL(trained ‖ method)`` on the natural calibration split ``cal``."""
    shape, bias = ctx.layer_shape, ctx.bias
    lf = ap.ce_losses(ap.head_logits(theta, forget[0], shape, bias), forget[1])
    zc = ap.head_logits(theta, cal[0], shape, bias)
    ls = ap.ce_losses(ap.head_logits(theta, stop.x, shape, bias), stop.y)
    stat, thr = stop.statistic(lf, forget[1], ls, cfg["alpha"])
    kl, _ = ap.kl_and_disagreement(before, theta, cal[0], shape, bias)
    return {"statistic": stat, "threshold": thr, "calibration_accuracy": ap.accuracy(zc, cal[1]),
            "calibration_kl_from_trained": kl}


def choose_method(methods: dict[str, Any]) -> str | None:
    """The method :data:`SELECTION_RULE` picks from ``methods`` (``None`` if none qualifies)."""
    base = methods["none"]["selection"]["calibration_accuracy"]
    ok = [(r["selection"]["calibration_kl_from_trained"], name != "none", name) for name, r in methods.items()
          if r["selection"]["statistic"] <= r["selection"]["threshold"]
          and r["selection"]["calibration_accuracy"] >= base - 0.01]
    return min(ok)[2] if ok else None  # a tie with doing nothing (a 0-step method) is doing nothing
