"""The cloning probe (``kind: cloning``, :func:`run_cloning`) over the pure-torch
:mod:`attacks.probes`, against a trained federation (:class:`fedsim.probe_context.ProbeContext`).

Cloning — a peer's deployed head answers queries; the attacker knows the
public frozen backbone, so it holds the features of its own images (the training features of the
*other* peers, or half of the test set with ``query_pool: heldout``), queries the target's
prediction API (full logits, top-``k``, or top-1 with its value, optionally behind a defence that
perturbs the outputs *before* ranking) and clones the head (:func:`attacks.probes.cloning_curve`:
stage 1 SVD of the logits → hidden size and output projection; stage 2 ridge with GCV on the
known features). ``target_head: {kind: bottleneck, hidden: h}`` replaces the federated linear head
(``d ≥ C``: its logits span ``R^C`` and stage 1 is vacuous) by a head with an ``h``-unit
bottleneck that the probe trains itself on the federation's (or the target's) training features
(:mod:`attacks.probes.bottleneck`). One record per (defence, k, repeats, query budget);
agreement, KL and clone accuracy are measured on test inputs the attacker never queried; each
defence's cost to the defender is its served top-1 accuracy vs the undefended one. See
``docs/probes-cloning.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from attacks import probes as ap
from fedsim import rng as crng
from fedsim.probe_context import _check_honest, _Ctx, _err

AGREEMENT_GOAL = 0.99  # "cost to the attacker": oracle queries until the clone agrees this often


def _defence_label(d: dict[str, Any] | None) -> str:
    if d is None:
        return "none"
    late = "@after_ranking" if d.get("stage") == "after_ranking" else ""
    if d["kind"] == "rounding":
        return f"rounding({d['decimals']}){late}"
    if d["kind"] == "noise":
        return f"noise({d['sigma']:g}){late}"
    return "top1"


def _oracle(model: Any, c: int, k: int | None, defence: dict[str, Any] | None, gen: torch.Generator) -> Any:
    o: Any = ap.ModelOracle(model, c, k=k)
    if defence is None:
        return o
    if defence["kind"] == "rounding":
        return ap.with_rounding(o, defence["decimals"], stage=defence["stage"])
    if defence["kind"] == "noise":
        return ap.with_gaussian_noise(o, defence["sigma"], generator=gen, stage=defence["stage"])
    return ap.with_top1(o)


def _query_pool(i: int, cfg: dict[str, Any], ctx: _Ctx, target: int | str) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The attacker's query features (shuffled) and the evaluation split ``(x, y)`` it never queries."""
    gen = crng.numpy_generator(ctx.seed, "probes_cloning_pool", i)
    if cfg["query_pool"] == "heldout":
        perm = gen.permutation(len(ctx.y_test))
        half = len(perm) // 2
        return ctx.x_test[torch.from_numpy(perm[:half])], ctx.data(np.sort(perm[half:]), "test")
    others = [j for j in range(ctx.n) if j != target]  # federated ('global'): every client's images
    qx, _ = ctx.peer_data(others)
    return qx[torch.from_numpy(gen.permutation(qx.shape[0]))], (ctx.x_test, ctx.y_test)


@dataclass
class _Target:
    """The model behind the API: its logits, linear params (if linear) and output projection."""

    model: Any
    params: Tensor | None
    projection: Tensor | None
    description: dict[str, Any]


def _target_model(i: int, cfg: dict[str, Any], ctx: _Ctx, target: int | str) -> _Target:
    """The federated head itself, or a bottleneck head the probe trains (``target_head``)."""
    th = cfg["target_head"]
    c = ctx.num_classes
    if th["kind"] == "federated":
        params = ctx.final_params[ctx.row(target)]
        return _Target(lambda x: ap.head_logits(params, x.to(torch.float64), ctx.layer_shape, ctx.bias), params,
                       None, {"kind": "federated", "hidden": None})
    if th["hidden"] >= c - 1:
        raise _err(i, "target_head.hidden", f"must be < C - 1 = {c - 1} (class-centered logits span at most "
                   f"C - 1 dimensions, so a wider bottleneck is not one), got {th['hidden']}")
    honest = [j for j in range(ctx.n) if ctx.honest[j]]
    x, y = ctx.peer_data(honest if th["train_on"] == "federation" or target == "global" else [int(target)])
    net = ap.train_bottleneck_head(x, y, c, th["hidden"], activation=th["activation"], epochs=th["epochs"],
                                   lr=th["lr"], weight_decay=th["weight_decay"],
                                   seed=int(crng.numpy_generator(ctx.seed, "probes_cloning_target", i).integers(2**31)))
    desc = {**th, "train_samples": int(x.shape[0])}
    return _Target(net.logits, net.linear_params(), net.V, desc)


def _defence_costs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (defence, k, repeats): oracle queries the attacker needs before its clone agrees with the target on
    at least ``AGREEMENT_GOAL`` of the evaluation inputs *at every larger budget too* (a noisy curve can
    touch the goal early and fall back), how that compares with no defence at the same k (``query_factor``;
    ``None`` when either never gets there), and the defender's own cost: the defended API's top-1 test
    accuracy vs the undefended one."""
    groups: dict[tuple[str, Any, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["defence"], r["topk"], r.get("repeats", 1)), []).append(r)

    def needed(rs: list[dict[str, Any]]) -> int | None:
        """Oracle queries of the smallest budget from which every larger budget reaches the goal."""
        best = None
        for r in sorted(rs, key=lambda r: r["n_query_points"], reverse=True):
            if (r["agreement"] or 0) < AGREEMENT_GOAL:
                break
            best = r["queries"]
        return best

    out = []
    for (dname, k, reps), rs in groups.items():
        base = groups.get(("none", k, 1)) or groups.get(("none", None, 1)) or []
        q, qb = needed(rs), needed(base)
        last = max(rs, key=lambda r: r["n_query_points"])
        served, clean = rs[0].get("served_accuracy"), rs[0].get("undefended_accuracy")
        out.append({
            "defence": dname, "topk": k, "repeats": reps, "agreement_goal": AGREEMENT_GOAL, "queries_to_goal": q,
            "query_factor": (q / qb) if (q is not None and qb) else None,
            "agreement_at_max": last["agreement"], "kl_at_max": last.get("kl_divergence"),
            "clone_accuracy_at_max": last["clone_accuracy"],
            "layer_relative_error_at_max": last["layer_relative_error"],
            "served_accuracy": served, "undefended_accuracy": clean,
            "defender_accuracy_cost": (clean - served) if (served is not None and clean is not None) else None,
        })
    return out


def _stage1(records: list[dict[str, Any]], target: _Target) -> dict[str, Any] | None:
    """Stage 1 of the undefended full-logit attack at its largest budget (hidden size, spectrum, subspace)."""
    full = [r for r in records if r["defence"] == "none" and r["topk"] is None and r.get("singular_values")]
    if not full:
        return None
    r = max(full, key=lambda r: r["n_query_points"])
    return {"n_query_points": r["n_query_points"], "singular_values": r["singular_values"],
            "hidden_size": r["hidden_size"], "identifiable": r["hidden_size_identifiable"],
            "true_hidden_size": target.description.get("hidden"), "subspace_error": r["subspace_error"],
            "max_principal_angle": r["max_principal_angle"]}


def run_cloning(i: int, cfg: dict[str, Any], ctx: _Ctx) -> dict[str, Any]:
    """One cloning probe → its ``probes.json`` entry (see the module docstring)."""
    target = cfg["target"]
    if ctx.federated:
        target = "global"
    elif target is None:
        target = int(np.flatnonzero(ctx.honest)[0])
    elif target == "global":
        raise _err(i, "target", "'global' exists in federated mode only; name a peer id")
    else:
        _check_honest(i, "target", int(target), ctx)
    c = ctx.num_classes
    bad = [k for k in cfg["topk"] if k is not None and k > c]
    if bad:
        raise _err(i, "topk", f"k={bad[0]} exceeds the number of classes ({c})")
    tgt = _target_model(i, cfg, ctx, target)
    qx, (ex, ey) = _query_pool(i, cfg, ctx, target)
    counts = sorted({min(q, qx.shape[0]) for q in cfg["queries"]})
    gen = crng.torch_generator(ctx.seed, "probes_cloning_noise", i)
    records: list[dict[str, Any]] = []
    clean_acc = float((tgt.model(ex).argmax(-1) == ey).to(torch.float64).mean())
    for defence in [None, *cfg["defences"]]:
        if defence is not None and defence["kind"] == "top1":
            ks: list[int | None] = [1]
        else:  # k = 1 is the top-1 label *with its value*
            ks = cfg["topk"]
        noisy = defence is not None and defence["kind"] == "noise"
        for k in ks:
            k_eff = None if k is None or k >= c else k
            for reps in cfg["repeats"] if noisy else [1]:  # averaging helps against fresh noise only
                oracle = _oracle(tgt.model, c, k_eff, defence, gen)
                served = float((oracle(ex, None)[0][:, 0] == ey).to(torch.float64).mean())
                method = "auto" if cfg["method"] == "ridge" else cfg["method"]
                if method == "least_squares" and (defence or {}).get("kind") == "top1":
                    method = "auto"  # labels only: distillation is the only option
                reps_out = ap.cloning_curve(
                    oracle, qx, counts, c, test_x=ex, test_y=ey, target_params=tgt.params, target_model=tgt.model,
                    true_projection=tgt.projection, bias=ctx.bias, method=method, repeats=reps,
                    noise_sigma=defence["sigma"] if noisy else None)
                for rep in reps_out:
                    records.append({"defence": _defence_label(defence), "topk": k_eff, **rep.to_dict(),
                                    "served_accuracy": served, "undefended_accuracy": clean_acc})
    return {
        "kind": "cloning",
        "target": target,
        "target_head": tgt.description,
        "query_pool": cfg["query_pool"],
        "query_pool_size": int(qx.shape[0]),
        "eval_samples": int(ey.shape[0]),
        "feature_dim": ctx.layer_shape[1],
        "num_classes": c,
        "records": records,
        "stage1": _stage1(records, tgt),
        "defence_cost": _defence_costs(records),
    }
