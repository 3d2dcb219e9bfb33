"""Unlearning judged against the retrained model in function space, and baseline unlearners
(issue 17, part 3, partly).

Closeness to the gold standard (the model retrained without the leaver, ``θ_r``) is measured on
what the models *output*, not on parameters or a single accuracy:

* ``KL(θ_r ‖ θ) = mean_x Σ_c p_r(c|x) (log p_r(c|x) − log p(c|x))`` on each split (forget /
  retain / test): 0 iff the two heads give the same predictive distribution on that split;
* disagreement = fraction of inputs whose top-1 class differs.

``gap_closed = 1 − KL_forget(θ_after) / KL_forget(θ_before)``: 1 means the unlearned head is as
close to retraining on the forget split as it can be, 0 means nothing changed, < 0 means further.
A method that ignores the forget set (e.g. shrinking the weights) can lower ``KL_forget`` only by
moving every prediction, which the retain/test KL shows.

Baselines (every departure a named parameter):

* :func:`newton_removal` — one damped Newton (influence-function) step removing the forget set
  (Koh & Liang 2017, "Understanding Black-box Predictions via Influence Functions"; Guo et al.
  2020, "Certified Data Removal"): with ``L̄_S`` the mean cross-entropy on ``S``, ``D = R ∪ F``,

      θ' = θ − (H̄_R(θ) + λ I)⁻¹ · (n_F / n_D) · (∇L̄_R(θ) − ∇L̄_F(θ)),

  the first-order change of the minimiser when ``F`` leaves the sum (``∇L̄_R − ∇L̄_D =
  (n_F/n_D)(∇L̄_R − ∇L̄_F)``; exact when ``θ`` minimises ``L̄_D``, which fedsim's early-stopped
  gossip heads do not: a departure). ``λ`` = ``damping`` (L2 damping of the Hessian). The solve
  uses conjugate gradients on exact Hessian-vector products of the softmax head
  (``H v = Xᵀ(p ⊙ Xv − p (pᵀ Xv)) / n``), so the ``P × P`` Hessian is never formed.
  ``target="retain_minimiser"`` (a departure, the stationary-point correction) drops the
  assumption instead: ``θ' = θ − (H̄_R(θ) + λ I)⁻¹ ∇L̄_R(θ)``, the exact minimiser of the damped
  quadratic model of the retained objective at ``θ`` (``steps > 1``: Newton's method on
  ``L̄_R + (λ/2)‖θ − θ_t‖²``); it removes the forget set's pull *and* finishes the training that
  early stopping left undone, so it lands where full-batch training on ``R`` would, which an
  early-stopped retrained federation need not be.
* :func:`finetune_on_retain` — the trained head fine-tuned on the retained data by full-batch
  gradient descent (``steps``, ``lr``).
* bias-only ascent — the harness runs :func:`attacks.probes.unlearn_gradient_ascent` with the
  weight part of the first-epoch gradient zeroed (the review's control: ascent that can only
  change the class prior).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from attacks.probes._head import ce_gradient, head_logits, unflatten

Shape = tuple[int, int]


def kl_and_disagreement(reference: Tensor, params: Tensor, x: Tensor, layer_shape: Shape,
                        bias: bool) -> tuple[float, float]:
    """``(mean KL(p_reference ‖ p_params), top-1 disagreement)`` on features ``x``."""
    if x.shape[0] == 0:
        return float("nan"), float("nan")
    x = x.to(torch.float64)
    lr_ = torch.log_softmax(head_logits(reference.to(torch.float64), x, layer_shape, bias), -1)
    lp = torch.log_softmax(head_logits(params.to(torch.float64), x, layer_shape, bias), -1)
    kl = float((lr_.exp() * (lr_ - lp)).sum(-1).mean())
    dis = float((lr_.argmax(-1) != lp.argmax(-1)).to(torch.float64).mean())
    return kl, dis


def function_gap(reference: Tensor, params: Tensor, splits: dict[str, Tensor], layer_shape: Shape,
                 bias: bool) -> dict[str, dict[str, float]]:
    """``{"kl_to_retrained": {split: KL}, "disagreement_to_retrained": {split: fraction}}``."""
    kl, dis = {}, {}
    for name, x in splits.items():
        kl[name], dis[name] = kl_and_disagreement(reference, params, x, layer_shape, bias)
    return {"kl_to_retrained": kl, "disagreement_to_retrained": dis}


def hessian_vector(params: Tensor, x: Tensor, layer_shape: Shape, bias: bool) -> Callable[[Tensor], Tensor]:
    """``v ↦ H̄ v`` for the mean cross-entropy of the head ``params`` on ``x`` (labels do not enter)."""
    x = x.to(torch.float64)
    p = torch.softmax(head_logits(params.to(torch.float64), x, layer_shape, bias), -1)  # [n, C]
    n = max(x.shape[0], 1)

    def hv(v: Tensor) -> Tensor:
        zv = head_logits(v, x, layer_shape, bias)  # [n, C] = X W_vᵀ + b_v
        u = p * zv - p * (p * zv).sum(-1, keepdim=True)
        gw = u.transpose(0, 1) @ x / n
        out = [gw.reshape(-1)]
        if bias:
            out.append(u.sum(0) / n)
        return torch.cat(out)

    return hv


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, *, max_iter: int = 500,
                       rtol: float = 1e-8) -> tuple[Tensor, int, float]:
    """Solve ``A s = b`` for symmetric positive-definite ``A`` → ``(s, iterations, relative residual)``."""
    s = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rs = float(r @ r)
    bn = max(float(b @ b) ** 0.5, 1e-300)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        ad = matvec(d)
        alpha = rs / float(d @ ad)
        s += alpha * d
        r -= alpha * ad
        rs_new = float(r @ r)
        if rs_new**0.5 / bn < rtol:
            rs = rs_new
            break
        d = r + (rs_new / rs) * d
        rs = rs_new
    return s, it, rs**0.5 / bn


def newton_removal(params: Tensor, layer_shape: Shape, bias: bool, forget: tuple[Tensor, Tensor],
                   retain: tuple[Tensor, Tensor], *, damping: float = 1e-3, steps: int = 1,
                   max_iter: int = 500, target: str = "removal") -> tuple[Tensor, dict[str, Any]]:
    """Damped Newton / influence removal (formula in the module docstring).

    ``steps = 1`` is the classic one-step influence removal. ``steps > 1`` (a departure) keeps
    solving the same removal equation ``∇L̄_R(θ') = ∇L̄_D(θ)`` (the retained loss's gradient at the
    new head equals the full loss's at the trained head: the trained head's non-stationarity is
    kept, the forget set's pull removed) by further Newton steps ``θ ← θ − (H̄_R(θ) + λI)⁻¹
    (∇L̄_R(θ) − ∇L̄_D(θ_0))``; the first of them is the one-step formula.

    ``target="retain_minimiser"`` solves ``∇L̄_R(θ') = 0`` instead (module docstring).

    Returns ``(θ', info)`` with the CG iterations and final relative residual of the last step.
    """
    if target not in ("removal", "retain_minimiser"):
        raise ValueError(f"target must be 'removal' or 'retain_minimiser', got {target!r}")
    if damping <= 0 or steps < 1:
        raise ValueError(f"damping must be > 0 and steps >= 1, got damping={damping}, steps={steps}")
    theta0 = params.detach().to(torch.float64)
    nf, nr = forget[1].numel(), retain[1].numel()
    xr, xf = retain[0].to(torch.float64), forget[0].to(torch.float64)
    gr0 = ce_gradient(theta0, xr, retain[1], layer_shape, bias)
    gf0 = ce_gradient(theta0, xf, forget[1], layer_shape, bias)
    goal = (nr * gr0 + nf * gf0) / (nf + nr)  # ∇L̄_D(θ_0)
    if target == "retain_minimiser":
        goal = torch.zeros_like(goal)
    theta, iters, res = theta0.clone(), 0, 0.0
    for _ in range(steps):
        rhs = ce_gradient(theta, xr, retain[1], layer_shape, bias) - goal
        hv = hessian_vector(theta, xr, layer_shape, bias)
        step, iters, res = conjugate_gradient(lambda v, hv=hv: hv(v) + damping * v, rhs, max_iter=max_iter)
        theta = theta - step
    return theta.to(params.dtype), {"cg_iterations": iters, "cg_relative_residual": res, "damping": damping,
                                    "steps": steps, "target": target, "step_norm": float((theta - theta0).norm())}


def finetune_on_retain(params: Tensor, layer_shape: Shape, bias: bool, retain: tuple[Tensor, Tensor], *,
                       steps: int = 50, lr: float = 0.5) -> Tensor:
    """``steps`` full-batch gradient-descent steps of size ``lr`` on the retained data's mean loss."""
    theta = params.detach().to(torch.float64).clone()
    x = retain[0].to(torch.float64)
    for _ in range(steps):
        theta -= lr * ce_gradient(theta, x, retain[1], layer_shape, bias)
    return theta.to(params.dtype)


def bias_only(gradient: Tensor, layer_shape: Shape, bias: bool) -> Tensor:
    """``gradient`` with its weight part zeroed (only the class biases may move)."""
    if not bias:
        raise ValueError("bias-only ascent needs a head with a bias")
    w, _ = unflatten(gradient, layer_shape, bias)
    out = gradient.clone()
    out[: w.numel()] = 0
    return out


def gap_closed(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per split, ``1 − KL(θ_r ‖ θ_after) / KL(θ_r ‖ θ_before)`` (both from :func:`function_gap`):
    1 = the method reached the retrained model's outputs on that split, 0 = no change, < 0 = further."""
    out = {}
    for split, kb in before["kl_to_retrained"].items():
        ka = after["kl_to_retrained"][split]
        out[split] = float("nan") if not kb > 0 else 1.0 - ka / kb
    return out
