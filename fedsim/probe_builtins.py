"""The built-in probe kinds, ``unlearning``, ``cloning`` and ``federated_unlearning``, as registered probes: their keys
and defaults, their value checks and their ``summary.json`` form (all without torch, so the
schema and ``fedsim list`` read them cheaply). What they do is :mod:`fedsim.probes` (imported
when one runs); ``docs/probes.md`` and ``docs/probes-cloning.md`` say what they report.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsim.errors import probe_error
from fedsim.probe_registry import Probe, notes_from_comments, register_probe

UNLEARNING_DEFAULTS: dict[str, Any] = {
    "peer": None,  # default: the honest peer with the most training samples
    "target": None,  # default: the leaver's first honest in-neighbour; federated: the global model
    "lr": 0.5,  # ascent step length in parameter space (normalised steps; the last one is bisected)
    "max_steps": 1000,
    "heldout_fraction": 0.5,
    "lira_shadows": 0,
    "retrain": True,
    "mode": "first_epoch",  # or "iterative"
    "tol": 1e-3,
    "criterion": "membership",  # ascent stopping rule: class-matched KS at its null level, or loss/accuracy/either
    "alpha": 0.05,  # level of the membership criterion's null threshold c_α
    # with calibration canaries: "separate" (canaries and natural data each tested at α/2) or "pooled"
    # (one statistic, the reference re-weighted to the forget set's canary/natural and class mix)
    "stop_groups": "separate",
    "path_every": 10,  # record the ascent path (stopping statistic, KL to the retrained head) every k steps
    "canaries": None,  # e.g. {count: 50, kind: mislabelled}: planted in the leaver's shard (fedsim.canaries)
    "permutations": 999,  # label permutations of every membership null distribution
    "newton_damping": 1e-3,  # L2 damping λ of the retained Hessian in the Newton removal
    "newton_steps": 1,  # Newton steps on the removal equation (1: the classic influence step)
    "newton_search_max": 8,  # newton_calibrated: most multiples of the Newton step searched along its direction
    "finetune_steps": 50,  # full-batch gradient steps of the fine-tune-on-retained baseline
    "finetune_lr": 0.5,
}
CLONING_DEFAULTS: dict[str, Any] = {
    "target": None,  # default: the first honest peer; federated: the global model
    "target_head": {"kind": "federated"},  # or {kind: bottleneck, hidden, ...}: see TARGET_HEAD_KEYS
    "queries": [8, 32, 128, 512, 2048],
    "topk": [None, 5, 2, 1],  # null: full logits; 1: top-1 label with its value
    "defences": [{"kind": "rounding", "decimals": 1}, {"kind": "noise", "sigma": 0.1}, {"kind": "top1"}],
    "repeats": [1],  # against noise defences: each query asked r times, answers averaged
    "method": "ridge",  # stage 2 from leaked logits: ridge (GCV) | least_squares | distill
    "query_pool": "peers",  # or "heldout"
}
FEDERATED_UNLEARNING_DEFAULTS: dict[str, Any] = {
    "peer": None,  # the leaver; default: the honest peer with the most training samples
    "arms": [0, 1, 2, "all"],  # who unlearns: 0 nobody (control), k within k hops, all (federated: the server)
    "rounds_after": [0, 5, 20],  # rounds of normal training without the leaver after the unlearning
    "method": "newton",  # newton (damped Newton/influence removal) or finetune_retain, on each unlearner's head
    "newton_damping": 1e-3,  # L2 damping λ of the Newton removal
    "finetune_steps": 50,  # finetune_retain: full-batch gradient steps on the retained data
    "finetune_lr": 0.5,
    "heldout_fraction": 0.5,  # the test split is the rest of the test set (the unlearning probe's split)
    "canaries": None,  # e.g. {count: 50, kind: ood}: planted in the leaver's shard (fedsim.canaries)
    "permutations": 199,  # label permutations of each canary membership null (per peer, arm and R)
}
TARGET_HEAD_KEYS: dict[str, dict[str, Any]] = {
    "federated": {},
    "bottleneck": {"hidden": 6, "activation": "linear", "train_on": "federation", "epochs": 300, "lr": 0.01,
                   "weight_decay": 0.0},
}
DEFENCE_KEYS: dict[str, dict[str, Any]] = {"rounding": {"decimals": 1, "stage": "before_ranking"},
                                           "noise": {"sigma": 0.1, "stage": "before_ranking"}, "top1": {}}


# ----------------------------------------------------------------------------- validation
def _err(i: int, key: str, msg: str) -> ValueError:
    return probe_error(i, key, msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _check_int(i: int, key: str, v: Any, lo: int, hi: int | None = None) -> int:
    if not _is_int(v) or v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise _err(i, key, f"must be an integer {rng}, got {v!r}")
    return int(v)


def _check_num(i: int, key: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = True,
               hi_open: bool = True) -> float:
    ok = _is_num(v) and (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        lb = "(" if lo_open else "["
        ub = ")" if hi_open else "]"
        raise _err(i, key, f"must be a number in {lb}{lo}, {'inf' if hi is None else hi}{ub}, got {v!r}")
    return float(v)


def _check_peer(i: int, key: str, v: Any, num_peers: int | None, allow_global: bool) -> int | str | None:
    if v is None or (allow_global and v == "global"):
        return v
    hi = None if num_peers is None else num_peers - 1
    what = "a peer id" + (" or 'global'" if allow_global else "")
    if not _is_int(v) or v < 0 or (hi is not None and v > hi):
        bound = "" if hi is None else f" in [0, {hi}]"
        raise _err(i, key, f"must be {what}{bound}, got {v!r}")
    return int(v)


def _validate_unlearning(i: int, p: dict[str, Any], num_peers: int | None) -> dict[str, Any]:
    cfg = {**UNLEARNING_DEFAULTS, **p}
    cfg["peer"] = _check_peer(i, "peer", cfg["peer"], num_peers, allow_global=False)
    cfg["target"] = _check_peer(i, "target", cfg["target"], num_peers, allow_global=True)
    if cfg["peer"] is not None and cfg["peer"] == cfg["target"]:
        raise _err(i, "target", f"must differ from probes.{i}.peer (the leaver's own model is not audited)")
    cfg["lr"] = _check_num(i, "lr", cfg["lr"], 0.0)
    cfg["max_steps"] = _check_int(i, "max_steps", cfg["max_steps"], 1)
    cfg["heldout_fraction"] = _check_num(i, "heldout_fraction", cfg["heldout_fraction"], 0.0, 1.0)
    shadows = cfg["lira_shadows"]
    if not _is_int(shadows) or shadows < 0 or shadows == 1:
        raise _err(i, "lira_shadows", f"must be 0 (off) or an integer >= 2, got {shadows!r}")
    if not isinstance(cfg["retrain"], bool):
        raise _err(i, "retrain", f"must be true or false, got {cfg['retrain']!r}")
    if cfg["mode"] not in ("first_epoch", "iterative"):
        raise _err(i, "mode", f"got {cfg['mode']!r}; allowed: first_epoch, iterative")
    cfg["tol"] = _check_num(i, "tol", cfg["tol"], 0.0)
    if cfg["criterion"] not in ("membership", "loss", "accuracy", "either"):
        raise _err(i, "criterion", f"got {cfg['criterion']!r}; allowed: membership, loss, accuracy, either")
    cfg["alpha"] = _check_num(i, "alpha", cfg["alpha"], 0.0, 1.0)
    if cfg["stop_groups"] not in ("pooled", "separate"):
        raise _err(i, "stop_groups", f"got {cfg['stop_groups']!r}; allowed: pooled, separate")
    cfg["path_every"] = _check_int(i, "path_every", cfg["path_every"], 0)
    from fedsim import canaries

    cfg["canaries"] = canaries.validate(f"probes.{i}.canaries", cfg["canaries"])
    cfg["permutations"] = _check_int(i, "permutations", cfg["permutations"], 99)
    cfg["newton_damping"] = _check_num(i, "newton_damping", cfg["newton_damping"], 0.0)
    cfg["newton_steps"] = _check_int(i, "newton_steps", cfg["newton_steps"], 1, 100)
    cfg["newton_search_max"] = _check_int(i, "newton_search_max", cfg["newton_search_max"], 1, 1000)
    cfg["finetune_steps"] = _check_int(i, "finetune_steps", cfg["finetune_steps"], 0)
    cfg["finetune_lr"] = _check_num(i, "finetune_lr", cfg["finetune_lr"], 0.0)
    return cfg


def _validate_federated_unlearning(i: int, p: dict[str, Any], num_peers: int | None) -> dict[str, Any]:
    cfg = {**FEDERATED_UNLEARNING_DEFAULTS, **p}
    cfg["peer"] = _check_peer(i, "peer", cfg["peer"], num_peers, allow_global=False)
    arms = cfg["arms"]
    if (not isinstance(arms, list) or not arms
            or any(not (a == "all" or (_is_int(a) and a >= 0)) for a in arms) or len(set(map(str, arms))) < len(arms)):
        raise _err(i, "arms", f"must be a non-empty list of distinct hop counts >= 0 (0: nobody) or 'all', "
                   f"got {arms!r}")
    cfg["arms"] = [a if a == "all" else int(a) for a in arms]
    ra = cfg["rounds_after"]
    if not isinstance(ra, list) or not ra or any(not _is_int(r) or r < 0 for r in ra):
        raise _err(i, "rounds_after", f"must be a non-empty list of integers >= 0, got {ra!r}")
    if cfg["method"] not in ("newton", "finetune_retain"):
        raise _err(i, "method", f"got {cfg['method']!r}; allowed: newton, finetune_retain")
    cfg["newton_damping"] = _check_num(i, "newton_damping", cfg["newton_damping"], 0.0)
    cfg["finetune_steps"] = _check_int(i, "finetune_steps", cfg["finetune_steps"], 0)
    cfg["finetune_lr"] = _check_num(i, "finetune_lr", cfg["finetune_lr"], 0.0)
    cfg["heldout_fraction"] = _check_num(i, "heldout_fraction", cfg["heldout_fraction"], 0.0, 1.0)
    from fedsim import canaries

    cfg["canaries"] = canaries.validate(f"probes.{i}.canaries", cfg["canaries"])
    cfg["permutations"] = _check_int(i, "permutations", cfg["permutations"], 99)
    return cfg


def _validate_defence(i: int, j: int, d: Any) -> dict[str, Any]:
    key = f"defences.{j}"
    if not isinstance(d, dict) or d.get("kind") not in DEFENCE_KEYS:
        raise _err(i, key, f"each defence is a mapping with kind: {' | '.join(DEFENCE_KEYS)}, got {d!r}")
    allowed = DEFENCE_KEYS[d["kind"]]
    for k in d:
        if k != "kind" and k not in allowed:
            extra = ", ".join(["kind", *allowed])
            raise _err(i, f"{key}.{k}", f"unknown key for defence kind {d['kind']}; allowed: {extra}")
    out = {**allowed, **d}
    if "stage" in out and out["stage"] not in ("before_ranking", "after_ranking"):
        raise _err(i, f"{key}.stage", f"got {out['stage']!r}; allowed: before_ranking, after_ranking")
    if out["kind"] == "rounding":
        out["decimals"] = _check_int(i, f"{key}.decimals", out["decimals"], 0, 12)
    elif out["kind"] == "noise":
        out["sigma"] = _check_num(i, f"{key}.sigma", out["sigma"], 0.0, lo_open=False)
    return out


def _validate_cloning(i: int, p: dict[str, Any], num_peers: int | None) -> dict[str, Any]:
    cfg = {**CLONING_DEFAULTS, **p}
    cfg["target"] = _check_peer(i, "target", cfg["target"], num_peers, allow_global=True)
    qs = cfg["queries"]
    if not isinstance(qs, list) or not qs or not all(_is_int(q) and q >= 1 for q in qs):
        raise _err(i, "queries", f"must be a non-empty list of integers >= 1, got {qs!r}")
    cfg["queries"] = sorted({int(q) for q in qs})
    ks = cfg["topk"]
    if not isinstance(ks, list) or not ks or not all(k is None or (_is_int(k) and k >= 1) for k in ks):
        raise _err(i, "topk", f"must be a non-empty list of null (full logits) or integers >= 1, got {ks!r}")
    cfg["topk"] = list(dict.fromkeys(None if k is None else int(k) for k in ks))
    ds = cfg["defences"]
    if not isinstance(ds, list):
        raise _err(i, "defences", f"must be a list of mappings, got {ds!r}")
    cfg["defences"] = [_validate_defence(i, j, d) for j, d in enumerate(ds)]
    if cfg["query_pool"] not in ("peers", "heldout"):
        raise _err(i, "query_pool", f"got {cfg['query_pool']!r}; allowed: peers, heldout")
    rs = cfg["repeats"]
    if not isinstance(rs, list) or not rs or not all(_is_int(r) and r >= 1 for r in rs):
        raise _err(i, "repeats", f"must be a non-empty list of integers >= 1, got {rs!r}")
    cfg["repeats"] = sorted({int(r) for r in rs})
    if cfg["method"] not in ("ridge", "least_squares", "distill"):
        raise _err(i, "method", f"got {cfg['method']!r}; allowed: ridge, least_squares, distill")
    cfg["target_head"] = _validate_target_head(i, cfg["target_head"])
    return cfg


def _validate_target_head(i: int, t: Any) -> dict[str, Any]:
    if not isinstance(t, dict) or t.get("kind") not in TARGET_HEAD_KEYS:
        raise _err(i, "target_head", f"must be a mapping with kind: {' | '.join(TARGET_HEAD_KEYS)}, got {t!r}")
    allowed = TARGET_HEAD_KEYS[t["kind"]]
    for k in t:
        if k != "kind" and k not in allowed:
            raise _err(i, f"target_head.{k}", f"unknown key for target_head kind {t['kind']}; allowed: "
                       f"{', '.join(['kind', *allowed])}")
    out = {**allowed, **t}
    if out["kind"] == "bottleneck":
        out["hidden"] = _check_int(i, "target_head.hidden", out["hidden"], 1)
        out["epochs"] = _check_int(i, "target_head.epochs", out["epochs"], 1)
        out["lr"] = _check_num(i, "target_head.lr", out["lr"], 0.0)
        out["weight_decay"] = _check_num(i, "target_head.weight_decay", out["weight_decay"], 0.0, lo_open=False)
        if out["activation"] not in ("linear", "relu"):
            raise _err(i, "target_head.activation", f"got {out['activation']!r}; allowed: linear, relu")
        if out["train_on"] not in ("federation", "target"):
            raise _err(i, "target_head.train_on", f"got {out['train_on']!r}; allowed: federation, target")
    return out


# ----------------------------------------------------------------------------- summary.json
def _summarize_unlearning(entry: dict[str, Any]) -> dict[str, Any]:
    rep = entry["records"][0]
    models = [m for m in ("before", "after", "retrained") if rep.get(m)]

    def pick(metric: str) -> dict[str, Any]:
        return {m: rep[m][metric] for m in models}

    return {
        "kind": "unlearning", "peer": entry["peer"], "target": entry["target"],
        "calibrated": (rep.get("trace") or {}).get("calibrated"), "steps": (rep.get("trace") or {}).get("steps"),
        "mia_advantage": pick("mia_advantage"), "forget_accuracy": pick("forget_accuracy"),
        "test_accuracy": pick("test_accuracy"),
        "influence_mia_by_hop": {f"{r['model']}:{r['hop']}": r["mia_advantage_mean"] for r in entry["influence"]},
        "membership": {f"{m}:{a}": {k: t[k] for k in ("advantage", "null_q95", "p_value", "tpr_at_1pct_fpr")}
                       for m, res in (entry.get("membership") or {}).items() for a, t in res.items()},
    }


def _summarize_federated_unlearning(entry: dict[str, Any]) -> dict[str, Any]:
    """Per arm, R and hop: the mean forget-set KL to the retrained federation and its difference to the control."""
    out: dict[str, Any] = {}
    for arm, rec in entry["records"].items():
        for r, groups in rec["rounds"].items():
            for g, cell in groups.items():
                out[f"{arm}:R={r}:hop={g}"] = {"kl_forget": cell["kl_to_retrained"]["forget"],
                                               "kl_forget_minus_control": (cell.get("kl_minus_control") or {})
                                               .get("forget")}
    return {"kind": "federated_unlearning", "peer": entry["peer"], "method": entry["method"], "by_arm": out}


def _summarize_cloning(entry: dict[str, Any]) -> dict[str, Any]:
    def key(d: dict[str, Any]) -> str:
        r = d.get("repeats", 1)
        return f"{d['defence']}/k={d['topk'] or 'all'}" + (f"/r={r}" if r != 1 else "")

    st = entry.get("stage1") or {}
    return {
        "kind": "cloning", "target": entry["target"],
        "target_head": (entry.get("target_head") or {}).get("kind", "federated"),
        "hidden_size": {"true": st.get("true_hidden_size"), "recovered": st.get("hidden_size"),
                        "identifiable": st.get("identifiable"), "subspace_error": st.get("subspace_error")},
        "agreement_at_max": {key(d): d["agreement_at_max"] for d in entry["defence_cost"]},
        "queries_to_99pct": {key(d): d["queries_to_goal"] for d in entry["defence_cost"]},
        "defender_accuracy_cost": {key(d): d.get("defender_accuracy_cost") for d in entry["defence_cost"]},
    }


# ----------------------------------------------------------------------------- the kinds
@register_probe("unlearning")
class Unlearning(Probe):
    """A peer leaves and asks to be forgotten: membership tests against nulls (canaries, LiRA),
    unlearning methods judged against a model retrained without it (docs/probes.md).

    What it does: the unlearning part of :mod:`fedsim.probes`'s docstring.
    """

    defaults = UNLEARNING_DEFAULTS
    notes = notes_from_comments(__file__, "UNLEARNING_DEFAULTS")

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        return _validate_unlearning(i, cfg, num_peers)

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probes import run_unlearning

        return run_unlearning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_unlearning(entry)


@register_probe("cloning")
class Cloning(Probe):
    """A peer's deployed head answers queries: hidden size by SVD, layer recovery, logit-bias
    attacks, defences and their cost, query cost to 99% agreement (docs/probes-cloning.md).

    What it does: the cloning part of :mod:`fedsim.probes`'s docstring.
    """

    defaults = CLONING_DEFAULTS
    notes = notes_from_comments(__file__, "CLONING_DEFAULTS")

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        return _validate_cloning(i, cfg, num_peers)

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probes import run_cloning

        return run_cloning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_cloning(entry)


@register_probe("federated_unlearning")
class FederatedUnlearning(Probe):
    """A peer leaves a federation: its neighbours, peers within k hops or everyone unlearn it,
    training goes on without it, and every head is judged against the federation retrained
    without it, by hop (docs/probes.md, "federated_unlearning").

    What it does: :mod:`fedsim.probe_fedunlearn`'s docstring.
    """

    defaults = FEDERATED_UNLEARNING_DEFAULTS
    notes = notes_from_comments(__file__, "FEDERATED_UNLEARNING_DEFAULTS")

    def validate(self, i: int, cfg: dict[str, Any], num_peers: int | None = None) -> dict[str, Any]:
        return _validate_federated_unlearning(i, cfg, num_peers)

    def run(self, i: int, cfg: dict[str, Any], ctx: Any) -> dict[str, Any]:
        from fedsim.probe_fedunlearn import run_federated_unlearning

        return run_federated_unlearning(i, cfg, ctx)

    def summarize(self, entry: dict[str, Any]) -> dict[str, Any]:
        return _summarize_federated_unlearning(entry)

    def markdown(self, entry: dict[str, Any]) -> str:
        """Per arm and R: the mean KL(retrained ‖ θ) per hop on the forget set's parts and test."""
        splits = [s for s in ("forget_natural", "forget_canaries", "test") if s in entry["splits"]] or ["forget"]
        arms, rounds = entry["arms"], [str(r) for r in entry["rounds_after"]]
        groups = list(entry["records"][arms[0]]["rounds"][rounds[0]])
        lines = [f"Federated unlearning: leaver {entry['peer']}, method {entry['method']}, trained "
                 f"{entry['trained_rounds']} rounds; mean KL(retrained || model) per hop, "
                 f"{' / '.join(splits)}", "",
                 "| arm | R | " + " | ".join(f"hop {g}" for g in groups) + " |", "|---" * (2 + len(groups)) + "|"]
        for arm in arms:
            for r in rounds:
                cells = [" / ".join(f"{entry['records'][arm]['rounds'][r][g]['kl_to_retrained'][s]:.4f}"
                                    for s in splits) for g in groups]
                lines.append(f"| {arm} | {r} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
