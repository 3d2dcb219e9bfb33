"""Unlearning probe: calibrated first-epoch gradient ascent on the output layer.

After D. Zagardo, "A More Practical Approach to Machine Unlearning" (arXiv 2406.09391): undo a
forget set's influence by *ascending* the training loss on it, using the gradients of the
*first* training epoch (which the paper finds more effective than multi-epoch gradients),
restricted to one layer, and **calibrated** so the ascent stops where the forget set looks like
data the model never saw (the paper's warning: ascend too little and the model still knows the
data; too far and the forget set becomes conspicuous, its loss suspiciously *high*).

Procedure implemented (``mode="first_epoch"``, the default), on the flattened linear head ``θ``
with ``L_S(θ)`` the mean cross-entropy on a set ``S`` and ``F_1..F_B`` the forget set's
minibatches (one batch by default):

1. **First-epoch gradients** ``g_1..g_B``, from the first available source:

   a. ``recorded_gradients`` — the forget data's gradients recorded during the first epoch of
      training (the paper's setting; the engine can log them for the peer that may leave);
   b. ``initial_params`` — the head training started from (e.g. the round-0 model): the
      first epoch is re-played there, ``g_j = ∇_θ L_{F_j}(θ_init)``;
   c. otherwise a first pass over the forget set *at the trained model*: for ``j = 1..B``,
      ``g_j = ∇_θ L_{F_j}(θ)`` at the current ``θ``, followed by that ascent step.

2. **Ascent** from the trained head, cycling through the recorded ``g_j`` (no fresh
   gradients): ``θ ← θ + η u_j`` with ``u_j = g_j / ‖g_j‖`` (``normalize=True``, so ``η`` is the
   step length in parameter space) or ``u_j = g_j``.
3. **Calibration**, checked after every step against a held-out reference set ``R`` the model
   never saw: stop at the first step where ``L_F(θ) ≥ L_R(θ)`` (``criterion="loss"``), or
   ``acc_F(θ) ≤ acc_R(θ)`` (``"accuracy"``), or either (``"either"``). The crossing step
   ``θ_{t−1} → θ_t`` is then bisected on ``θ(α) = θ_{t−1} + α η u``: we keep the smallest α found
   that meets the criterion, and for the loss criterion bisect until ``0 ≤ L_F − L_R ≤ tol``:
   the forget loss reaches the reference loss and never overshoots it by more than ``tol``.

   ``criterion="membership"`` compares the forget set's and the reference set's per-example losses
   by a class-matched one-sided Kolmogorov–Smirnov statistic ``D⁺`` and stops at its null level
   ``c_α`` (:mod:`attacks.probes.unlearning_stop`: the statistic, its threshold, ``forget_strata`` /
   ``reference_strata`` and ``forget_groups`` / ``reference_groups``); its crossing step is bisected
   to the smallest ``α_step`` (to 1e-6 of a step) with ``D⁺ ≤ c_α``. Neither rule looks at the
   retrained model (the unlearner does not have it).

``path_every = k > 0`` records the ascent path every ``k`` steps (and at the start and the final
point) in ``trace.path``: ``step`` (fractional at the bisected end), ``forget_loss``,
``reference_loss``, ``statistic`` (``D⁺``) and ``threshold`` (``c_α``), plus whatever the
``observe(θ)`` callback returns (the harness adds the KL/disagreement to the retrained model and
test accuracy: an observer only, never used to stop).

``mode="iterative"`` recomputes the gradient at the current model at every step (plain
multi-epoch gradient ascent, the paper's baseline). The reference loss/accuracy is the
*current* model's (``fixed_reference=False``) or the original model's (``True``).

Deviations from the paper: it studies GPT-2 and ascends on the embedding layer; here the
backbone is frozen and only the linear output layer is trainable, so the ascent is restricted
to that layer (gradients in closed form, see ``_head.ce_gradient``). Normalised steps and the
concrete stopping rule above (reference-loss crossing + bisection) are our version of the
paper's qualitative "careful calibration".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from attacks.probes._head import accuracy, ce_gradient, ce_losses, head_logits
from attacks.probes.unlearning_stop import stopping_statistic
from attacks.probes.unlearning_trace import UnlearningTrace

Dataset = tuple[Tensor, Tensor]


@dataclass
class _Eval:
    f_loss: float
    r_loss: float
    f_acc: float
    r_acc: float
    stat: float = float("nan")
    thr: float = float("nan")


def unlearn_gradient_ascent(
    params: Tensor,
    layer_shape: tuple[int, int],
    bias: bool,
    forget_x: Tensor,
    forget_y: Tensor,
    reference_x: Tensor,
    reference_y: Tensor,
    lr: float,
    max_steps: int,
    *,
    mode: str = "first_epoch",
    batch_size: int | None = None,
    recorded_gradients: Tensor | None = None,
    initial_params: Tensor | None = None,
    normalize: bool = True,
    criterion: str = "loss",
    tol: float = 1e-3,
    alpha: float = 0.05,
    fixed_reference: bool = False,
    max_bisections: int = 60,
    generator: torch.Generator | None = None,
    path_every: int = 0,
    observe: Callable[[Tensor], dict[str, Any]] | None = None,
    forget_strata: Tensor | None = None,
    reference_strata: Tensor | None = None,
    forget_groups: Tensor | None = None,
    reference_groups: Tensor | None = None,
) -> tuple[Tensor, UnlearningTrace]:
    """Calibrated gradient ascent on the forget set (procedure in the module docstring).

    Args:
        params: the trained head ``[P]`` (flattened ``W [C, d]`` row-major, then ``b [C]``).
        layer_shape, bias: the head layout.
        forget_x, forget_y: the data to forget (features ``[n_f, d]``, labels ``[n_f]``).
        reference_x, reference_y: held-out data the model never saw (the calibration target).
        lr: ascent step size ``η`` (the step length in parameter space with ``normalize``).
        max_steps: most ascent steps.
        mode: ``"first_epoch"`` (replay first-epoch gradients) or ``"iterative"`` (fresh
            gradient at the current model each step).
        batch_size: forget-set minibatch size (``None``: the whole forget set, one batch).
        recorded_gradients: ``[B, P]`` or ``[P]`` forget-set gradients recorded during the first
            training epoch; replayed cyclically (overrides ``mode`` and ``initial_params``).
        initial_params: the head training started from; first-epoch gradients are recomputed
            there (``mode="first_epoch"`` only).
        normalize: step along ``g/‖g‖`` (``lr`` is then the step length) instead of ``g``.
        criterion: ``"loss"``, ``"accuracy"``, ``"either"`` or ``"membership"`` (class-matched
            KS statistic at its null level ``c_α``).
        tol: the calibrated forget loss lies in ``[L_R, L_R + tol]`` (loss criterion).
        alpha: level ``α`` of the membership criterion's threshold ``c_α``.
        fixed_reference: compare with the *original* model's reference loss/accuracy instead of
            the current model's.
        max_bisections: cap on bisection iterations for the last step.
        generator: shuffles the forget set into minibatches (only with ``batch_size``).
        path_every: record ``trace.path`` every this many steps (0: no path).
        observe: ``θ ↦ {key: value}`` added to each path point (an observer; never used to stop).
        forget_strata, reference_strata: ``[n_f]``, ``[n_R]`` strata that the membership criterion
            matches instead of the labels (both or neither; default: the labels).
        forget_groups, reference_groups: ``[n_f]``, ``[n_R]`` groups tested separately at level
            ``α/G`` (:func:`grouped_membership_statistic`; both or neither; default: one pooled test).

    Returns:
        ``(new_params [P], UnlearningTrace)``.
    """
    if criterion not in {"loss", "accuracy", "either", "membership"}:
        raise ValueError(f"criterion must be 'loss', 'accuracy', 'either' or 'membership', got {criterion!r}")
    if mode not in {"first_epoch", "iterative"}:
        raise ValueError(f"mode must be 'first_epoch' or 'iterative', got {mode!r}")
    if lr <= 0 or max_steps < 0 or tol <= 0 or not 0 < alpha < 1 or path_every < 0:
        raise ValueError("lr and tol must be > 0, alpha in (0, 1), max_steps and path_every >= 0")
    dtype = torch.float64
    theta0 = params.detach().to(dtype).clone()
    fx, rx = forget_x.to(dtype), reference_x.to(dtype)
    member = criterion == "membership"
    if (forget_strata is None) != (reference_strata is None) or (forget_groups is None) != (reference_groups is None):
        raise ValueError("give both forget_strata and reference_strata (and forget_groups and reference_groups), "
                         "or neither")
    sf = forget_y if forget_strata is None else forget_strata
    sr = reference_y if reference_strata is None else reference_strata
    if sf.shape[0] != fx.shape[0] or sr.shape[0] != rx.shape[0]:
        raise ValueError(f"strata must have one entry per example: forget {tuple(sf.shape)} vs {fx.shape[0]}, "
                         f"reference {tuple(sr.shape)} vs {rx.shape[0]}")

    def evaluate(theta: Tensor) -> _Eval:
        zf = head_logits(theta, fx, layer_shape, bias)
        zr = head_logits(theta, rx, layer_shape, bias)
        lf, lr_ = ce_losses(zf, forget_y), ce_losses(zr, reference_y)
        e = _Eval(float(lf.mean()), float(lr_.mean()), accuracy(zf, forget_y), accuracy(zr, reference_y))
        if member:
            e.stat, e.thr = stopping_statistic(lf, sf, lr_, sr, alpha, forget_groups, reference_groups)
        return e

    start = evaluate(theta0)

    def targets(e: _Eval) -> tuple[float, float]:
        return (start.r_loss, start.r_acc) if fixed_reference else (e.r_loss, e.r_acc)

    def loss_gap(e: _Eval) -> float:
        return e.f_loss - targets(e)[0]

    def reached(e: _Eval) -> tuple[bool, str]:
        if member:
            return (True, "membership_at_null") if e.stat <= e.thr else (False, "")
        loss_ok = loss_gap(e) >= 0
        acc_ok = e.f_acc <= targets(e)[1]
        if criterion in {"loss", "either"} and loss_ok:
            return True, "loss_reached_reference"
        if criterion in {"accuracy", "either"} and acc_ok:
            return True, "accuracy_reached_reference"
        return False, ""

    hist: dict[str, list[float]] = {k: [] for k in ("fl", "rl", "fa", "ra", "st", "th")}
    path: list[dict[str, Any]] = []

    def point(step: float, theta: Tensor, e: _Eval) -> None:
        pt: dict[str, Any] = {"step": step, "forget_loss": e.f_loss, "reference_loss": e.r_loss,
                              "statistic": e.stat if member else None, "threshold": e.thr if member else None}
        if observe is not None:
            pt.update(observe(theta))
        path.append(pt)

    def push(e: _Eval, step: int | None, theta: Tensor) -> None:
        for key, val in zip(("fl", "rl", "fa", "ra"), (e.f_loss, e.r_loss, e.f_acc, e.r_acc), strict=True):
            hist[key].append(val)
        if member:
            hist["st"].append(e.stat)
            hist["th"].append(e.thr)
        if path_every and step is not None and step % path_every == 0:
            point(float(step), theta, e)

    push(start, 0, theta0)

    def trace(steps: int, evals: int, frac: float, bis: int, ok: bool, reason: str,
              used_mode: str) -> UnlearningTrace:
        return UnlearningTrace(used_mode, criterion, steps, evals, frac, bis, ok, reason, tol,
                               hist["fl"], hist["rl"], hist["fa"], hist["ra"], alpha, hist["st"], hist["th"], path)

    if recorded_gradients is not None:
        used_mode = "recorded"
    elif mode == "first_epoch" and initial_params is not None:
        used_mode = "first_epoch_initial"
    else:
        used_mode = mode
    done, reason = reached(start)
    if done:
        return theta0.to(params.dtype), trace(0, 0, 1.0, 0, True, "already_calibrated", used_mode)

    # minibatches of the forget set
    n_f = fx.shape[0]
    if batch_size is None or batch_size >= n_f:
        batches = [torch.arange(n_f, device=fx.device)]
    else:
        perm = torch.randperm(n_f, generator=generator, device="cpu").to(fx.device)
        batches = list(perm.split(batch_size))

    def grad_at(theta: Tensor, j: int) -> Tensor:
        idx = batches[j % len(batches)]
        return ce_gradient(theta, fx[idx], forget_y[idx], layer_shape, bias)

    replay: list[Tensor] = []
    evals = 0
    if recorded_gradients is not None:
        rg = recorded_gradients.detach().to(dtype)
        replay = list(rg.reshape(-1, rg.shape[-1]))
    elif used_mode == "first_epoch_initial":
        theta_init = initial_params.detach().to(dtype)  # type: ignore[union-attr]
        replay = [grad_at(theta_init, j) for j in range(len(batches))]
        evals = len(replay)

    theta = theta0
    for step in range(1, max_steps + 1):
        if used_mode == "iterative" or (used_mode == "first_epoch" and step <= len(batches)):
            g = grad_at(theta, step - 1)
            evals += 1
            if used_mode == "first_epoch":
                replay.append(g)
        else:
            g = replay[(step - 1) % len(replay)]
        if normalize:
            g = g / torch.linalg.norm(g).clamp_min(1e-300)
        cand = theta + lr * g
        e = evaluate(cand)
        done, reason = reached(e)
        if not done:
            theta = cand
            push(e, step, theta)
            continue
        # bisect α ∈ (lo, hi] on θ(α) = θ + α η g; criterion false at lo, true at hi
        lo, hi, e_hi, bis = 0.0, 1.0, e, 0
        while bis < max_bisections:
            if reason == "loss_reached_reference" and loss_gap(e_hi) <= tol:
                break
            if reason in ("accuracy_reached_reference", "membership_at_null") and hi - lo <= 1e-6:
                break
            mid = 0.5 * (lo + hi)
            e_mid = evaluate(theta + mid * lr * g)
            ok_mid, reason_mid = reached(e_mid)
            if ok_mid:
                hi, e_hi, reason = mid, e_mid, reason_mid
            else:
                lo = mid
            bis += 1
        final = theta + hi * lr * g
        push(e_hi, None, final)
        if path_every:
            point(step - 1 + hi, final, e_hi)
        return final.to(params.dtype), trace(step, evals, hi, bis, True, reason, used_mode)
    if path_every and max_steps % path_every:
        point(float(max_steps), theta, evaluate(theta))
    return theta.to(params.dtype), trace(max_steps, evals, 1.0, 0, False, "max_steps", used_mode)
