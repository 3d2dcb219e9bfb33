"""The unlearning probe (``kind: unlearning``, :func:`run_unlearning`) over the pure-torch
:mod:`attacks.probes`, against a trained federation (:class:`fedsim.probe_context.ProbeContext`).

Unlearning — a peer leaves and asks that its data be forgotten:

Unlearning (``kind: unlearning``) — a peer leaves and asks that its data be forgotten:

* forget set = the leaving peer's training samples; retained set = the other honest peers'
  training samples; the test set is split once (deterministically from the seed) into a
  held-out part (``heldout_fraction``) and the rest (test accuracy). The held-out part is halved
  again: a *calibration* half (the gradient ascent's stopping reference — with canaries joined by
  the calibration canaries, :func:`fedsim.canaries.stopping_reference` — and the shadow pool of
  offline LiRA) and an *MIA* half (the non-members of every membership-inference number), so the
  attack is never scored on the data the calibration or the shadows used.
* the target's head (the leaver's first honest in-neighbour by default; the global model in
  federated mode) is unlearned by calibrated first-epoch gradient ascent
  (:func:`attacks.probes.unlearn_gradient_ascent`), replaying the leaver's real first-epoch
  minibatch gradients, recorded by its peer group during training (``GroupSetup.record_gradients``:
  ``ceil(shard / batch_size)`` steps, each at the head that step started from; only when an
  unlearning probe runs). Without them (a resumed run) the first epoch's gradient is replayed at
  ``θ = 0`` (fedsim's heads start at zero); ``trace.mode`` says which (``recorded`` or
  ``first_epoch_initial``). Beside it, the baselines of :mod:`attacks.probes.retrain_gap`, all judged
  against the retrained head in function space (``methods``, docs/probes.md);
* canaries (``canaries``, :mod:`fedsim.canaries`) and membership tests against nulls
  (``membership``, :mod:`attacks.probes.membership`);
* gold standard: the same scenario retrained with the peer absent, in
  ``<run>/probes/retrain-without-<peer>/`` (``retrain: false`` skips it);
* influence spread: loss-threshold MIA advantage and forget-set accuracy of every honest peer,
  grouped by hop distance from the leaver (breadth-first search along "who hears whom" in round
  0's graph), before unlearning and in the retrained federation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks import probes as ap
from attacks.probes._records import to_plain
from fedsim import canaries as canaries_mod
from fedsim import rng as crng
from fedsim.probe_context import (
    _check_honest,
    _Ctx,
    _default_leaver,
    _default_unlearn_target,
    _err,
    _retrain_without,
    heldout_split,
    hop_distances,
    in_neighbors,
    retrain_dir,
)
from fedsim.probe_rollback import rollback_heads


def _per_peer_mia(ctx: _Ctx, params: Tensor, forget: tuple[Tensor, Tensor],
                  heldout: tuple[Tensor, Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Loss-threshold MIA advantage and forget-set accuracy of every head in ``params [N, P]``."""
    zf = ap.head_logits(params, forget[0], ctx.layer_shape, ctx.bias)  # [N, nf, C]
    zh = ap.head_logits(params, heldout[0], ctx.layer_shape, ctx.bias)
    lf = torch.logsumexp(zf, -1) - zf.gather(-1, forget[1].expand(zf.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    lh = torch.logsumexp(zh, -1) - zh.gather(-1, heldout[1].expand(zh.shape[0], -1).unsqueeze(-1)).squeeze(-1)
    adv = np.asarray([ap.loss_threshold_mia(lf[j], lh[j]) for j in range(params.shape[0])])
    acc = (zf.argmax(-1) == forget[1]).to(torch.float64).mean(-1).numpy()
    return adv, acc


def _influence(ctx: _Ctx, model: str, params: Tensor, hops: np.ndarray, peers: np.ndarray,
               forget: tuple[Tensor, Tensor], heldout: tuple[Tensor, Tensor]) -> list[dict[str, Any]]:
    """Influence records of ``peers`` grouped by hop distance from the leaver."""
    adv, acc = _per_peer_mia(ctx, params, forget, heldout)
    out = []
    for h in sorted({int(x) for x in hops[peers]}):
        sel = peers[hops[peers] == h]
        out.append({
            "model": model, "hop": h, "peers": len(sel), "peer_ids": sel.tolist(),
            "mia_advantage_mean": float(adv[sel].mean()), "mia_advantage_max": float(adv[sel].max()),
            "forget_accuracy_mean": float(acc[sel].mean()),
        })
    return out


def _canary_shadows(i: int, cfg: dict[str, Any], ctx: _Ctx, peer: int, pop_x: Tensor, pop_y: Tensor,
                    natural: np.ndarray) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """LiRA shadows for the canary population ``(pop_x, pop_y)`` (members then held-out canaries),
    trained the way a peer trains its head: the scenario's SGD (lr, momentum, weight decay, batch
    size) for ``rounds × local_steps`` steps on a shard the size of the leaver's natural shard,
    drawn from the federation's natural training data, plus each canary with probability ½ (shadow
    pairs are complementary on the canaries, so every canary is *in* half the shadows).

    Returns ``(shadow heads [S, P], in-mask on the population [S, m], setup record)``. Departure:
    no gossip averaging is emulated (a shadow is one peer's local training, not a federation)."""
    t = ctx.training
    s_count = int(cfg["lira_shadows"])
    gen = crng.torch_generator(ctx.seed, "probes_canary_shadows", i)
    nat_x, nat_y = ctx.data(natural)
    shard = len(ctx.train_idx[peer]) - len(ctx.canaries.member_idx)  # type: ignore[union-attr]
    m = pop_x.shape[0]
    masks = []
    for k in range(s_count):
        if k % 2 == 0:
            half = torch.zeros(m, dtype=torch.bool)
            half[torch.randperm(m, generator=gen)[: m // 2]] = True
        else:
            half = ~masks[-1][1]
        nat = torch.zeros(nat_x.shape[0], dtype=torch.bool)
        nat[torch.randperm(nat_x.shape[0], generator=gen)[:shard]] = True
        masks.append((nat, half))
    in_mask = torch.stack([torch.cat([a, b]) for a, b in masks])
    heads = ap.train_heads_sgd(torch.cat([nat_x, pop_x]), torch.cat([nat_y, pop_y]), in_mask, ctx.num_classes,
                               steps=ctx.rounds * t.local_steps, batch_size=t.batch_size,
                               lr=float(t.lr), momentum=float(t.momentum),
                               weight_decay=float(t.weight_decay), bias=ctx.bias, generator=gen)
    info = {"shadows": s_count, "shard_size": shard, "steps": ctx.rounds * t.local_steps,
            "optimizer": "sgd", "target_optimizer": t.optimizer, "batch_size": t.batch_size,
            "lr": float(t.lr), "momentum": float(t.momentum), "fixed_variance": s_count // 2 < 64}
    return heads, in_mask[:, nat_x.shape[0]:], info


def _membership(i: int, cfg: dict[str, Any], ctx: _Ctx, peer: int, models: dict[str, Tensor],
                mia: tuple[Tensor, Tensor]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Membership tests of every model (``before``/``after``/``retrained``) against their nulls
    (:func:`attacks.probes.membership_test`): the leaver's natural data vs the MIA half of the
    test split (loss threshold, with the class-matched null), and with canaries the member
    canaries vs the held-out ones (loss threshold; online and offline LiRA with ``lira_shadows``).
    """
    shape, bias, perms = ctx.layer_shape, ctx.bias, cfg["permutations"]
    can = ctx.canaries if ctx.canaries is not None and ctx.canaries.peer == peer else None
    if cfg["canaries"] is not None and can is None:
        raise _err(i, "canaries", f"no canaries were planted in peer {peer}'s shard (the run's leaver)")
    natural = np.setdiff1d(ctx.train_idx[peer], can.member_idx) if can is not None else ctx.train_idx[peer]
    nat_m = ctx.data(natural)
    info: dict[str, Any] = {"natural_members": len(natural), "natural_nonmembers": int(mia[1].numel()),
                            "permutations": perms}
    pop = shadows = None
    if can is not None:
        cx, cy = ctx.data(can.member_idx)
        pop = (torch.cat([cx, torch.from_numpy(can.heldout_x).to(torch.float64)]),
               torch.cat([cy, torch.from_numpy(can.heldout_y).long()]))
        nm = len(can.member_idx)
        info["canaries"] = {"kind": can.kind, "members": nm, "heldout": len(can.heldout_y),
                            "calibration": len(can.calibration_y)}
        if cfg["lira_shadows"]:
            others = np.concatenate([np.setdiff1d(ctx.train_idx[j], can.member_idx)
                                     for j in range(ctx.n) if ctx.honest[j]])
            shadows = _canary_shadows(i, cfg, ctx, peer, *pop, others)
            info["lira"] = shadows[2]
    out: dict[str, dict[str, Any]] = {}
    for name, theta in models.items():
        gen = crng.torch_generator(ctx.seed, "probes_membership", i)
        res: dict[str, Any] = {}
        lm = ap.ce_losses(ap.head_logits(theta, nat_m[0], shape, bias), nat_m[1])
        ln = ap.ce_losses(ap.head_logits(theta, mia[0], shape, bias), mia[1])
        res["natural_loss"] = ap.membership_test(-lm, -ln, attack="loss_threshold", data="natural",
                                                 permutations=perms, generator=gen, member_y=nat_m[1],
                                                 nonmember_y=mia[1]).to_dict()
        if pop is not None:
            z = ap.head_logits(theta, pop[0], shape, bias)
            lc = ap.ce_losses(z, pop[1])
            res["canary_loss"] = ap.membership_test(-lc[:nm], -lc[nm:], attack="loss_threshold", data="canaries",
                                                    permutations=perms, generator=gen).to_dict()
            if shadows is not None:
                heads, in_mask, _ = shadows
                phi_obs = ap.logit_confidence(z, pop[1])
                phi_sh = ap.logit_confidence(ap.head_logits(heads, pop[0], shape, bias), pop[1])
                for online in (True, False):
                    sc = ap.lira_scores(phi_obs, phi_sh, in_mask, online=online)
                    key = "canary_lira_" + ("online" if online else "offline")
                    res[key] = ap.membership_test(sc[:nm], sc[nm:], attack=key[7:], data="canaries",
                                                  permutations=perms, generator=gen).to_dict()
        out[name] = res
    return out, info


def to_plain_path(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ascent path as plain JSON values (non-finite numbers become ``None``)."""
    return [to_plain(p) for p in path]


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
        if "forget_groups" in k:
            return ap.grouped_membership_statistic(forget_losses, k["forget_strata"], k["forget_groups"],
                                                   reference_losses, k["reference_strata"], k["reference_groups"],
                                                   alpha)
        return ap.membership_statistic(forget_losses, k.get("forget_strata", forget_y), reference_losses,
                                       k.get("reference_strata", self.y), alpha)


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


def run_unlearning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One unlearning probe → its ``probes.json`` entry (see the module docstring)."""
    peer = _default_leaver(ctx) if cfg["peer"] is None else cfg["peer"]
    _check_honest(i, "peer", peer, ctx)
    target = cfg["target"]
    if target is None or (ctx.federated and target != "global"):
        target = _default_unlearn_target(i, ctx, peer) if target is None else "global"
    if target == "global" and not ctx.federated:
        raise _err(i, "target", "'global' exists in federated mode only; name a peer id")
    if target != "global":
        _check_honest(i, "target", int(target), ctx)
        if int(target) == peer:
            raise _err(i, "target", f"must differ from the leaving peer ({peer})")
    shape, bias = ctx.layer_shape, ctx.bias
    forget = ctx.peer_data([peer])
    retain = ctx.peer_data([j for j in range(ctx.n) if ctx.honest[j] and j != peer])
    cal_i, mia_i, test_i = heldout_split(len(ctx.y_test), cfg["heldout_fraction"], ctx.seed)
    cal, mia, test = ctx.data(cal_i, "test"), ctx.data(mia_i, "test"), ctx.data(test_i, "test")
    stop = _stop_reference(cfg, ctx, peer, forget, cal)  # natural calibration split + calibration canaries
    shadows = None
    if cfg["lira_shadows"]:
        shadows = ap.train_shadow_heads(cal[0], cal[1], shape, bias, cfg["lira_shadows"],
                                        generator=crng.torch_generator(ctx.seed, "probes_lira", i))
    before = ctx.final_params[ctx.row(target)]
    rec = ctx.recorded_gradients  # the leaver's real first-epoch gradients (fedsim.peers)
    recorded = None if rec is None or cfg["mode"] != "first_epoch" else torch.from_numpy(rec).to(torch.float64)
    retrained_all = torch.from_numpy(_retrain_without(i, ctx, peer)).to(torch.float64) if cfg["retrain"] else None
    retrained = None if retrained_all is None else retrained_all[ctx.row(target)]
    splits = {"forget": forget[0], "retain": retain[0], "test": test[0]}
    if ctx.canaries is not None and ctx.canaries.peer == peer:  # the forget set's two parts, judged apart too
        is_can = torch.from_numpy(np.isin(ctx.train_idx[peer], ctx.canaries.member_idx))
        splits |= {"forget_natural": forget[0][~is_can], "forget_canaries": forget[0][is_can]}

    def observe(theta: Tensor) -> dict[str, Any]:  # the path's judge: recorded, never used to stop
        out: dict[str, Any] = {"test_accuracy": ap.accuracy(ap.head_logits(theta, test[0], shape, bias), test[1])}
        if retrained is not None:
            out.update(ap.function_gap(retrained, theta, splits, shape, bias))
        return out

    after, trace = ap.unlearn_gradient_ascent(
        before, shape, bias, forget[0], forget[1], stop.x, stop.y, cfg["lr"], cfg["max_steps"],
        mode=cfg["mode"], initial_params=torch.zeros_like(before), tol=cfg["tol"], recorded_gradients=recorded,
        criterion=cfg["criterion"], alpha=cfg["alpha"], path_every=cfg["path_every"], observe=observe,
        **stop.strata,
    )
    rollback = _rollback(cfg, ctx, peer, target)
    report = ap.evaluate_unlearning(before, after, retrained, forget, retain, test, mia, layer_shape=shape,
                                    bias=bias, shadows=shadows, trace=trace)
    methods, heads = _methods(cfg, ctx, before, after, retrained, forget, retain, test, cal, recorded, stop,
                              {k: v for k, v in splits.items() if k.startswith("forget_")}, rollback)
    methods["gradient_ascent"].update(steps=trace.steps, stop_reason=trace.stop_reason, criterion=trace.criterion,
                                      path=to_plain_path(trace.path))
    extra = {k: v for k, v in heads.items() if k not in ("none", "gradient_ascent")}
    models = {"before": before, "after": after, **extra, **({"retrained": retrained} if retrained is not None else {})}
    membership, membership_info = _membership(i, cfg, ctx, peer, models, mia)
    influence: list[dict[str, Any]] = []
    if not ctx.federated:
        hops = hop_distances(in_neighbors(ctx.topology), peer)
        honest = np.flatnonzero(ctx.honest)
        influence = _influence(ctx, "before", ctx.final_params, hops, honest, forget, mia)
        if retrained_all is not None:
            others = honest[honest != peer]  # the absent peer only trained locally: not part of the federation
            influence += _influence(ctx, "retrained", retrained_all, hops, others, forget, mia)
    return {
        "kind": "unlearning",
        "peer": peer,
        "target": target,
        "forget_samples": len(forget[1]),
        "retain_samples": len(retain[1]),
        "split": {"calibration": len(cal_i), "mia_nonmembers": len(mia_i), "test": len(test_i),
                  "calibration_canaries": len(stop.y) - len(cal_i)},
        "lira_shadows": cfg["lira_shadows"],
        "retrained_dir": (str(retrain_dir(ctx.out_dir, peer)) if cfg["retrain"] and ctx.out_dir else None),
        "records": [report.to_dict()],
        "methods": methods,
        "chosen": {"rule": SELECTION_RULE, "method": choose_method(methods)},
        "skipped_methods": {} if rollback[0] is not None else {"gossip_rollback": rollback[1]["skipped"]},
        "membership": membership,
        "membership_setup": membership_info,
        "influence": influence,
    }

