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

The membership tests are :mod:`fedsim.probe_unlearning_membership`; the stopping reference, the
other methods, the gossip rollback and the selection rule :mod:`fedsim.probe_unlearning_methods`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks import probes as ap
from attacks.probes._records import to_plain
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
from fedsim.probe_unlearning_membership import _membership
from fedsim.probe_unlearning_methods import SELECTION_RULE, _methods, _rollback, _stop_reference, choose_method


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


def to_plain_path(path: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ascent path as plain JSON values (non-finite numbers become ``None``)."""
    return [to_plain(p) for p in path]


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

