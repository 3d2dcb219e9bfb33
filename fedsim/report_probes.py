"""Markdown of a run's ``probes.json`` (``fedsim run``'s report after the rounds, ``fedsim report``):
the built-in kinds' tables (unlearning, cloning), a registered probe's own ``markdown(entry)``, else
an entry's scalar fields. The probes.json schema is documented in ``docs/probes.md``."""

from __future__ import annotations

import math
import numbers
from typing import Any


def _is_num(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _pct(v: Any, digits: int = 1) -> str:
    return "–" if not _is_num(v) else f"{100 * v:.{digits}f}%"


def _pnum(v: Any, fmt: str = ".3f") -> str:
    return "–" if not _is_num(v) else format(v, fmt)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


_UNLEARNING_ROWS = [
    ("forget accuracy", "forget_accuracy", "pct"), ("retain accuracy", "retain_accuracy", "pct"),
    ("test accuracy", "test_accuracy", "pct"), ("forget loss", "forget_loss", "num"),
    ("held-out loss", "heldout_loss", "num"), ("MIA advantage (loss threshold)", "mia_advantage", "num"),
    ("MIA advantage (offline LiRA)", "lira_advantage", "num"), ("LiRA AUC", "lira_auc", "num"),
]


def _format_unlearning(e: dict[str, Any]) -> str:
    rep = e["records"][0]
    models = [m for m in ("before", "after", "retrained") if isinstance(rep.get(m), dict)]
    diff = rep.get("after_minus_retrained") or {}
    rows = []
    for name, key, kind in _UNLEARNING_ROWS:
        vals = [rep[m].get(key) for m in models]
        if all(v is None for v in vals):
            continue
        f = _pct if kind == "pct" else _pnum
        d = diff.get(key)
        dtxt = "–" if d is None else (f"{100 * d:+.1f} pp" if kind == "pct" else f"{d:+.3f}")
        rows.append([name, *[f(v) for v in vals], *([dtxt] if "retrained" in models else [])])
    header = ["metric", *models, *(["after − retrained"] if "retrained" in models else [])]
    tr = rep.get("trace") or {}
    sp = e.get("split", {})
    out = [
        f"### Unlearning: peer {e['peer']} leaves ({e['forget_samples']} training samples); "
        f"model unlearned: {'global model' if e['target'] == 'global' else 'peer ' + str(e['target'])}",
        "",
        _md_table(header, rows),
        "",
        f"Gradient ascent ({tr.get('mode')}): {tr.get('steps')} step{'' if tr.get('steps') == 1 else 's'}, "
        f"{'calibrated' if tr.get('calibrated') else 'NOT calibrated'} ({tr.get('stop_reason')}); "
        f"forget loss {_pnum(tr.get('final_forget_loss'))} vs calibration-set loss "
        f"{_pnum(tr.get('final_reference_loss'))}"
        + (f"; membership statistic D+ {_pnum((tr.get('statistic') or [None])[-1])} vs null level "
           f"{_pnum((tr.get('threshold') or [None])[-1])}" if tr.get("criterion") == "membership" else "")
        + f". Chosen method ({(e.get('chosen') or {}).get('rule', 'no rule')}): "
        f"{(e.get('chosen') or {}).get('method')}. Split of the test set: {sp.get('calibration')} calibration, "
        f"{sp.get('mia_nonmembers')} MIA non-members, {sp.get('test')} test.",
    ]
    if e.get("methods"):
        out += ["", _format_methods(e["methods"], retrained="retrained" in models)]
    if e.get("membership"):
        out += ["", _format_membership(e)]
    if e.get("influence"):
        by_hop: dict[int, dict[str, dict[str, Any]]] = {}
        for r in e["influence"]:
            by_hop.setdefault(r["hop"], {})[r["model"]] = r
        has_rt = any("retrained" in v for v in by_hop.values())
        header = ["hop", "peers", "MIA adv. before", *(["MIA adv. retrained"] if has_rt else []),
                  "forget acc. before", *(["forget acc. retrained"] if has_rt else [])]
        rows = []
        for h, v in sorted(by_hop.items()):
            b, r = v.get("before", {}), v.get("retrained", {})
            rows.append([str(h), str(b.get("peers", r.get("peers", 0))), _pnum(b.get("mia_advantage_mean")),
                         *([_pnum(r.get("mia_advantage_mean"))] if has_rt else []),
                         _pct(b.get("forget_accuracy_mean")),
                         *([_pct(r.get("forget_accuracy_mean"))] if has_rt else [])])
        out += ["", "Influence spread (hop distance from the leaver; mean over honest peers; hop 0 is the "
                "leaver itself, absent from the retrained federation):", "", _md_table(header, rows)]
    return "\n".join(out)


def _ci(v: Any) -> str:
    return "–" if not v or not all(_is_num(x) for x in v) else f"[{100 * v[0]:.1f}, {100 * v[1]:.1f}]%"


def _format_methods(methods: dict[str, Any], retrained: bool = True) -> str:
    """Unlearning methods against the retrained head (KL(retrained ‖ method), top-1 disagreement).
    ``retrained``: the entry has a retrained model, so every method has ``kl_to_retrained`` and
    ``disagreement_to_retrained`` (docs/probes.md; a ``KeyError`` when one is missing)."""
    rows = []
    for name, r in methods.items():
        if retrained:
            kl, dis = r["kl_to_retrained"], r["disagreement_to_retrained"]
        else:  # retrain: false: accuracies only
            kl, dis = r.get("kl_to_retrained") or {}, r.get("disagreement_to_retrained") or {}
        closed = r.get("kl_gap_closed") or {}
        rows.append([name, *[_pnum(kl.get(s), ".4f") for s in ("forget", "retain", "test")],
                     *[_pct(dis.get(s)) for s in ("forget", "test")], _pct(closed.get("forget")),
                     _pct(r.get("test_accuracy"))])
    return "\n".join(["Unlearning methods against the model retrained without the leaver (KL(retrained ‖ method) "
                      "per split, top-1 disagreement, share of the forget-split KL gap closed):", "",
                      _md_table(["method", "KL forget", "KL retain", "KL test", "disagree forget", "disagree test",
                              "gap closed (forget)", "test acc."], rows)])


def _format_membership(e: dict[str, Any]) -> str:
    """Membership-inference table: every advantage beside its nulls (docs/probes.md)."""
    rows = []
    for model, res in e["membership"].items():
        for attack, t in res.items():
            cm = t.get("class_matched_q95")
            rows.append([model, attack, _pnum(t["advantage"]), _pnum(t["null_q95"]), _pnum(cm),
                         _pnum(t["p_value"], ".4f"),
                         _pct(t["tpr_at_1pct_fpr"]), _ci(t.get("tpr_at_1pct_fpr_ci")), _pct(t["tpr_at_0_1pct_fpr"]),
                         _ci(t.get("tpr_at_0_1pct_fpr_ci")), _pnum(t["auc"])])
    setup = e.get("membership_setup") or {}
    can = setup.get("canaries")
    lira = setup.get("lira")
    what = (f"{can['members']} {can['kind']} canaries vs {can['heldout']} held-out canaries" if can else "no canaries")
    shadows = (f"; LiRA: {lira['shadows']} shadows trained by SGD for {lira['steps']} steps on {lira['shard_size']} "
               f"examples{' (fixed variance)' if lira['fixed_variance'] else ''}" if lira else "")
    return "\n".join([
        f"Membership inference ({what}; natural: {setup.get('natural_members')} of the leaver's examples vs "
        f"{setup.get('natural_nonmembers')} held-out; cross-fitted advantage, permutation null of "
        f"{setup.get('permutations')} relabellings{shadows}):", "",
        _md_table(["model", "attack", "advantage", "null q95", "class-matched q95", "p", "TPR@1%FPR", "95% CI",
                "TPR@0.1%FPR", "95% CI", "AUC"], rows)])


def _k_label(k: Any, c: Any = None) -> str:
    return (f"all ({c})" if c else "all") if k is None else str(k)


def _format_cloning(e: dict[str, Any]) -> str:
    recs = e["records"]
    c = e.get("num_classes")

    def line(r: dict[str, Any]) -> tuple[str, Any, int]:
        return r["defence"], r["topk"], r.get("repeats", 1)

    def name(dname: str, k: Any, reps: int) -> list[str]:
        return [dname + (f" ×{reps} avg" if reps != 1 else ""), _k_label(k, c)]

    keys = list(dict.fromkeys(line(r) for r in recs))
    budgets = sorted({r["n_query_points"] for r in recs})
    by = {(*line(r), r["n_query_points"]): r for r in recs}
    rows = [[*name(*key), *[_pct(by.get((*key, n), {}).get("agreement")) for n in budgets]] for key in keys]
    tgt = next((r.get("target_accuracy") for r in recs if r.get("target_accuracy") is not None), None)
    who = "global model" if e["target"] == "global" else f"peer {e['target']}"
    th = e.get("target_head") or {"kind": "federated"}
    if th.get("kind") == "bottleneck":
        head = (f"bottleneck head trained by the probe on {th.get('train_samples')} samples of the "
                f"{th.get('train_on')}'s data, {th.get('activation')}, hidden h = {th.get('hidden')}")
    else:
        head = "the federated linear head"
    out = [
        f"### Cloning: target {who}, {head} (test accuracy {_pct(tgt)}; d = {e.get('feature_dim')}, C = {c}; "
        f"query pool: {e.get('query_pool')}, {e.get('query_pool_size')} inputs)",
        "",
        "Agreement of clone and target on held-out test inputs (never queried), by number of query inputs:",
        "",
        _md_table(["defence", "k", *[str(n) for n in budgets]], rows),
    ]
    st = e.get("stage1")
    if st:
        sv = ", ".join(f"{v:.3g}" for v in st["singular_values"])
        ni = "" if st["identifiable"] else " (not identifiable: no drop, logits span R^(C-1))"
        out += ["", f"Stage 1 (SVD of {st['n_query_points']} undefended full logit vectors, class- and "
                f"column-centered): singular values {sv}; hidden size recovered "
                f"{st['hidden_size']}{ni}"
                f" (true: {st['true_hidden_size'] if st['true_hidden_size'] is not None else '≥ C, linear head'}); "
                f"subspace error {_pnum(st['subspace_error'], '.2e')}, largest principal angle "
                f"{_pnum(st['max_principal_angle'], '.2e')} rad."]
    top = budgets[-1]
    rows = []
    for key in keys:
        r = by.get((*key, top))
        if r is None:
            continue
        hs = r.get("hidden_size")
        rows.append([*name(*key), str(r["method"]), str(r["queries"]), _pnum(r["layer_relative_error"], ".2e"),
                     "–" if hs is None else f"{hs}{'' if r['hidden_size_identifiable'] else ' (n.i.)'}",
                     _pct(r["agreement"]), _pnum(r.get("kl_divergence"), ".2e"), _pct(r["clone_accuracy"])])
    out += ["", f"At {top} query inputs (oracle queries include logit-bias queries and repeats; hidden size "
            "'n.i.' = not identifiable; KL = mean KL(target ‖ clone) on the test inputs, nats):",
            "", _md_table(["defence", "k", "method", "oracle queries", "rel. layer error", "hidden size", "agreement",
                        "KL", "clone acc."], rows)]
    costs = e.get("defence_cost") or []
    if costs:
        rows = [[*name(d["defence"], d["topk"], d.get("repeats", 1)),
                 "never" if d["queries_to_goal"] is None else str(d["queries_to_goal"]),
                 "–" if d["query_factor"] is None else f"×{d['query_factor']:.3g}",
                 _pct(d.get("served_accuracy")),
                 "–" if d.get("defender_accuracy_cost") is None else f"{100 * d['defender_accuracy_cost']:+.1f} pp"]
                for d in costs]
        goal = costs[0]["agreement_goal"]
        out += ["", f"Cost to the attacker: oracle queries from which the clone agrees on ≥ {100 * goal:g}% of test "
                "inputs at every larger budget tried (factor vs no defence at the same k); served acc. = the "
                "defended API's own top-1 test accuracy, defender cost = undefended minus served accuracy:", "",
                _md_table(["defence", "k", "queries to goal", "vs none", "served acc.", "defender cost"], rows)]
    return "\n".join(out)


def _format_generic(e: dict[str, Any]) -> str:
    """A probe kind without a Markdown form of its own: its entry's scalar fields."""
    rows = [[str(k), str(v)] for k, v in e.items() if isinstance(v, str | int | float | bool) or v is None]
    return f"### Probe: {e.get('kind')}\n\n" + _md_table(["field", "value"], rows)


_PROBE_MARKDOWN = {"unlearning": _format_unlearning, "cloning": _format_cloning}


class ProbesShapeError(ValueError):
    """A parsed ``probes.json`` not shaped as ``docs/probes.md`` documents; the message names the entry
    and what is wrong (``entry 0: records is not a list``)."""


_DATA_ERRORS = (KeyError, TypeError, AttributeError, IndexError, ValueError)


def _entries(records: Any) -> list[dict[str, Any]]:
    """The entries of a parsed ``probes.json`` (a list of entries, one entry, or ``null`` for none),
    each checked for the shape every formatter relies on: an object with a string ``kind``; for the
    kinds with a table here (unlearning, cloning), ``records`` a list of objects."""
    if records is None:
        return []
    if not isinstance(records, dict | list):
        raise ProbesShapeError(f"top level is {type(records).__name__}, not a list of entries or one entry")
    entries = [records] if isinstance(records, dict) else records
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ProbesShapeError(f"entry {i}: is {type(e).__name__}, not an object")
        if not isinstance(e.get("kind"), str):
            raise ProbesShapeError(f"entry {i}: kind is not a string")
        recs = e.get("records")
        if e["kind"] in _PROBE_MARKDOWN and recs is not None:
            if not isinstance(recs, list):
                raise ProbesShapeError(f"entry {i}: records is not a list")
            bad = next((j for j, r in enumerate(recs) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ProbesShapeError(f"entry {i}: records[{bad}] is not an object")
    return entries


def _data_error(i: int, kind: str, err: Exception) -> ProbesShapeError:
    what = f"missing field {err}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
    return ProbesShapeError(f"entry {i} ({kind}): {what}")


def format_probes(records: Any) -> str:
    """Markdown tables of a parsed ``probes.json`` (a list of entries, or one entry): the built-in
    kinds' tables here, a registered probe's own ``markdown(entry)`` where it has one (a plugin
    loaded in this process), else its entry's scalar fields (a plugin's entry needs no
    ``records``; a built-in's without records is left out). Raises :class:`ProbesShapeError` naming
    the entry when the file is not shaped as documented: its shape is checked first
    (:func:`_entries`), and a field a table reads that is missing or of another type while one entry
    is formatted is reported the same way."""
    from fedsim.probe_registry import kinds

    REGISTRY = kinds()  # the built-ins registered (federated_unlearning's markdown)
    parts = []
    for i, e in enumerate(_entries(records)):
        kind = e["kind"]
        builtin = kind in _PROBE_MARKDOWN or getattr(REGISTRY.get(kind), "__module__", "") == "fedsim.probe_builtins"
        if builtin and not e.get("records"):
            continue  # the built-ins' tables read their records; an entry without any has nothing to show
        own = getattr(REGISTRY.get(kind), "markdown", None) if kind not in _PROBE_MARKDOWN else None
        try:
            text = _PROBE_MARKDOWN[kind](e) if kind in _PROBE_MARKDOWN else own(REGISTRY[kind](), e) if own else None
        except _DATA_ERRORS as err:
            raise _data_error(i, kind, err) from None
        parts.append(text if text is not None else _format_generic(e))
    return "\n\n".join(parts) + ("\n" if parts else "")
