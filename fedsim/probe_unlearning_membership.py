"""The unlearning probe's membership tests (:func:`fedsim.probe_unlearning.run_unlearning`): every
model against its nulls on the leaver's natural data and, with canaries, on the member vs held-out
canaries (loss threshold; online and offline LiRA over shadows trained as a peer trains its head).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks import probes as ap
from fedsim import rng as crng
from fedsim.probe_context import _Ctx, _err


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
