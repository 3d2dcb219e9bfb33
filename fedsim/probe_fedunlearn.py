"""Unlearning in a federation (``kind: federated_unlearning``, issue 17 item 3): who unlearns, and
what gossip does to it afterwards.

After the scenario's ``T = rounds`` rounds the leaver leaves: the trained federation's state
(every head and optimizer buffer, :attr:`fedsim.runner.Run.final_state`) is moved into the same
federation prepared with the leaver absent (:meth:`fedsim.runner.Run.continue_without`, the
engine's ``absent`` mechanism: from round ``T`` on its messages never arrive). Each *arm* first
applies the unlearning ``method`` to the heads of a set of peers — ``0``: nobody (the control),
``k``: every honest peer within ``k`` hops of the leaver (1: its direct neighbours), ``all``:
every honest peer (federated mode: ``0`` or ``all``, the server's global model) — and then the
federation keeps *training* normally (local steps + aggregation) for ``max(rounds_after)`` rounds.
The gold standard is the same scenario retrained from scratch with the leaver absent for
``T + R`` rounds (same seeds), taken at every ``R`` of ``rounds_after`` from one run.

``method: gossip_rollback`` (:mod:`fedsim.probe_rollback`, a decentralised linearised FedEraser):
an arm's peers *replay* the last ``rollback_rounds`` rounds' averages without the leaver's
messages (from the messages the run recorded). ``all`` is FedEraser's analogue, the whole
federation replays; ``k`` (departure, ours: FedEraser has no partial replay) only the peers within
``k`` hops replay, every other peer keeps its recorded head and its recorded messages enter the
replaying peers' averages unchanged (the leaver's influence they carry included); ``0``: nobody.
Like the other methods it edits heads, not momentum buffers (the linearised buffer change is
dropped). When the rollback cannot run (not decentralized, another rule, Byzantine peers, a whole
model, an incomplete window) only the control arm runs and ``skipped_methods`` says why.

Reported per arm, per ``R`` and per hop distance from the leaver (federated: the global model):
mean ``KL(retrained ‖ θ)`` on the forget set (its natural part and canaries apart when the
scenario plants them) and on the test split, each arm's difference to the control, and the
canary loss-threshold membership advantage with its permutation null (``attacks.probes.
membership_test``), beside the retrained federation's own. docs/probes.md, "federated_unlearning".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

import strategies
from attacks import probes as ap
from fedsim import rng as crng
from fedsim.probe_context import _check_honest, _Ctx, _default_leaver, _err, heldout_split, hop_distances, in_neighbors
from fedsim.probe_rollback import rollback_heads, skip_reason

ALL = "all"
ROLLBACK = "gossip_rollback"


def unlearners(ctx: _Ctx, peer: int, arm: int | str, hops: np.ndarray) -> list[int]:
    """The honest peers (never the leaver) whose heads ``arm`` unlearns: within ``arm`` hops, or every one."""
    honest = [j for j in np.flatnonzero(ctx.honest) if j != peer]
    if arm == ALL:
        return [int(j) for j in honest]
    return [int(j) for j in honest if 0 < hops[j] <= int(arm)]


def _arm_key(arm: int | str) -> int:
    """An arm as a random-stream counter (``all``: -1; the retrained federation uses -2)."""
    return -1 if arm == ALL else int(arm)


def _unlearn(cfg: dict[str, Any], ctx: _Ctx, theta: Tensor, forget: tuple[Tensor, Tensor],
             retain: tuple[Tensor, Tensor]) -> Tensor:
    """``cfg["method"]`` (``newton`` or ``finetune_retain``) applied to one head (float64 ``[P]``)."""
    shape, bias = ctx.layer_shape, ctx.bias
    if cfg["method"] == "newton":
        return ap.newton_removal(theta, shape, bias, forget, retain, damping=cfg["newton_damping"])[0]
    return ap.finetune_on_retain(theta, shape, bias, retain, steps=cfg["finetune_steps"], lr=cfg["finetune_lr"])


def _edited_state(ctx: _Ctx, rows: dict[int, Tensor], server: Tensor | None) -> dict[str, Any]:
    """A copy of the trained state with the heads of ``rows`` (peer → flat head) and, federated,
    the global model replaced; optimizer buffers are kept as they were (documented departure:
    an unlearning peer edits its head, not its momentum)."""
    st = ctx.final_state
    assert st is not None
    groups = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in st["groups"].items()}
    for j, theta in rows.items():
        w, b = strategies.unflatten(theta[None].float(), ctx.layer_shape, ctx.bias)
        groups["w"][j] = w[0]
        if b is not None:
            groups["b"][j] = b[0]
    srv = st["server"]
    if srv is not None:
        srv = dict(srv)
        if server is not None:
            srv["global"] = server.float().clone()
    return {"groups": groups, "server": srv}


def _canary_advantage(ctx: _Ctx, theta: Tensor, pop: tuple[Tensor, Tensor], nm: int, perms: int,
                      seed_key: tuple[Any, ...]) -> dict[str, float]:
    z = ap.head_logits(theta, pop[0], ctx.layer_shape, ctx.bias)
    lc = ap.ce_losses(z, pop[1])
    t = ap.membership_test(-lc[:nm], -lc[nm:], attack="loss_threshold", data="canaries", permutations=perms,
                           generator=crng.torch_generator(ctx.seed, "probes_fedunlearn", *seed_key))
    return {"advantage": t.advantage, "null_q95": t.null_q95, "p_value": t.p_value}


def run_federated_unlearning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One ``federated_unlearning`` probe → its ``probes.json`` entry (module docstring)."""
    if ctx.final_state is None or ctx.continue_without is None:
        raise _err(i, "kind", "federated_unlearning needs the trained federation's state (run it from a run)")
    peer = _default_leaver(ctx) if cfg["peer"] is None else cfg["peer"]
    _check_honest(i, "peer", peer, ctx)
    arms = list(cfg["arms"])
    if ctx.federated and any(a not in (0, ALL) for a in arms):
        raise _err(i, "arms", f"federated mode has no hops: use 0 (nobody) and 'all' (the server), got {arms}")
    shape, bias, T = ctx.layer_shape, ctx.bias, ctx.rounds
    skipped: dict[str, str] = {}
    if cfg["method"] == ROLLBACK and (why := skip_reason(ctx, cfg["rollback_rounds"])) is not None:
        skipped[ROLLBACK] = why
        arms = [a for a in arms if a == 0]  # only the control can run
    rounds_after = sorted(set(cfg["rounds_after"]))
    horizon = rounds_after[-1]
    forget = ctx.peer_data([peer])
    retain = ctx.peer_data([j for j in range(ctx.n) if ctx.honest[j] and j != peer])
    _, _, test_i = heldout_split(len(ctx.y_test), cfg["heldout_fraction"], ctx.seed)
    splits = {"forget": forget[0], "test": ctx.data(test_i, "test")[0]}
    can = ctx.canaries if ctx.canaries is not None and ctx.canaries.peer == peer else None
    pop, nm = None, 0
    if can is not None:
        is_can = torch.from_numpy(np.isin(ctx.train_idx[peer], can.member_idx))
        splits |= {"forget_natural": forget[0][~is_can], "forget_canaries": forget[0][is_can]}
        cx, cy = ctx.data(can.member_idx)
        pop = (torch.cat([cx, torch.from_numpy(can.heldout_x).to(torch.float64)]),
               torch.cat([cy, torch.from_numpy(can.heldout_y).long()]))
        nm = len(can.member_idx)
    hops = (np.zeros(ctx.n, dtype=np.int64) if ctx.federated
            else hop_distances(in_neighbors(ctx.topology), peer))
    others = [int(j) for j in np.flatnonzero(ctx.honest) if j != peer]
    rows = [0] if ctx.federated else others  # the models judged (federated: the global model, row 0)
    groups = {"global": [0]} if ctx.federated else {
        str(h): [j for j in others if hops[j] == h] for h in sorted({int(hops[j]) for j in others})}
    # the gold standard: retrained from scratch without the leaver, taken at T + R for every R
    gold = ctx.continue_without(peer, None, 0, T + horizon, [T + r for r in rounds_after])
    gold = {r: torch.from_numpy(np.asarray(gold[T + r])).to(torch.float64) for r in rounds_after}

    def judge(params: Tensor, r: int, arm: Any) -> dict[str, Any]:
        per = {j: ap.function_gap(gold[r][j], params[j], splits, shape, bias) for j in rows}
        out: dict[str, Any] = {}
        for g, members in groups.items():
            kl = {s: float(np.mean([per[j]["kl_to_retrained"][s] for j in members])) for s in splits}
            dis = {s: float(np.mean([per[j]["disagreement_to_retrained"][s] for j in members])) for s in splits}
            rec: dict[str, Any] = {"peers": members, "kl_to_retrained": kl, "disagreement_to_retrained": dis,
                                   "kl_to_retrained_per_peer": {str(j): per[j]["kl_to_retrained"] for j in members}}
            if pop is not None:
                mi = [_canary_advantage(ctx, params[j], pop, nm, cfg["permutations"], (i, _arm_key(arm), r, j))
                      for j in members]
                rec["canary_membership"] = {k: float(np.mean([m[k] for m in mi])) for k in mi[0]}
                rec["canary_membership"]["significant_share"] = float(np.mean([m["p_value"] < 0.01 for m in mi]))
            out[g] = rec
        return out

    records: dict[str, Any] = {}
    for arm in arms:
        who = [] if arm == 0 else ([] if ctx.federated else unlearners(ctx, peer, arm, hops))
        if cfg["method"] == ROLLBACK:  # the arm's peers replay, the others keep what they recorded
            heads = rollback_heads(ctx, peer, cfg["rollback_rounds"], replaying=who)[0] if who else None
            edited = {j: heads[j] for j in who} if heads is not None else {}
            server = None
        else:
            edited = {j: _unlearn(cfg, ctx, ctx.final_params[j], forget, retain) for j in who}
            server = (_unlearn(cfg, ctx, ctx.final_params[0], forget, retain)
                      if ctx.federated and arm == ALL else None)
        state = _edited_state(ctx, edited, server)
        cont = ctx.continue_without(peer, state, T, horizon, rounds_after)
        records[str(arm)] = {
            "unlearned": who if not ctx.federated else (["server"] if server is not None else []),
            "rounds": {str(r): judge(torch.from_numpy(np.asarray(cont[r])).to(torch.float64), r, arm)
                       for r in rounds_after},
        }
    control = records.get("0")
    if control is not None:
        for rec in records.values():
            for r, by_group in rec["rounds"].items():
                for g, cell in by_group.items():
                    base = control["rounds"][r][g]["kl_to_retrained"]
                    cell["kl_minus_control"] = {s: cell["kl_to_retrained"][s] - base[s] for s in splits}
    retrained_membership = None
    if pop is not None:
        retrained_membership = {str(r): {g: {k: float(np.mean([
            _canary_advantage(ctx, gold[r][j], pop, nm, cfg["permutations"], (i, -2, r, j))[k]
            for j in members])) for k in ("advantage", "null_q95", "p_value")} for g, members in groups.items()}
            for r in rounds_after}
    return {
        "kind": "federated_unlearning", "peer": peer, "method": cfg["method"], "trained_rounds": T,
        "rounds_after": rounds_after, "arms": [str(a) for a in arms], "splits": list(splits),
        "hops": {str(j): int(hops[j]) for j in others}, "forget_samples": int(forget[1].numel()),
        "canaries": None if can is None else {"members": nm, "nonmembers": int(pop[1].numel()) - nm},
        "test_samples": len(test_i), "records": records, "retrained_canary_membership": retrained_membership,
        "rollback_rounds": min(cfg["rollback_rounds"], T) if cfg["method"] == ROLLBACK and not skipped else None,
        "skipped_methods": skipped,
    }
