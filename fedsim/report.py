"""``fedsim report``: a Markdown (or CSV) table of a run or a sweep.

One row per configuration (the runs' varying scenario keys, seeds pooled): final mean honest
accuracy (mean ± sample std over seeds), rounds to a target accuracy, and bytes sent. Every
number comes from the runs' ``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from fedsim._runs import (
    RunData,
    RunSet,
    fmt_value,
    group_runs,
    human_bytes,
    label,
    load_runs,
    mean_std,
    shared_settings,
)


@dataclass
class Row:
    """One configuration's numbers (accuracies are fractions in [0, 1])."""

    config: dict[str, Any]
    runs: list[RunData]
    accuracy_mean: float | None
    accuracy_std: float | None
    rounds_to_target: list[int | None]
    bytes_per_peer: float
    bytes_total: float

    @property
    def reached(self) -> list[int]:
        return [r for r in self.rounds_to_target if r is not None]


def summarize(
    rs: RunSet, target: float = 0.9, by: list[str] | None = None
) -> tuple[list[str], list[Row], list[RunData]]:
    """Group the complete runs of ``rs`` by ``by`` (default: every varying key but the seed).

    Returns (the grouping keys, one :class:`Row` per group, the incomplete runs left out)."""
    complete = [r for r in rs.runs if r.complete]
    incomplete = [r for r in rs.runs if not r.complete]
    done = RunSet(rs.root, complete, rs.index)
    keys = by if by is not None else done.varying_keys()
    if not keys:
        keys = ["strategy.name"]
    rows = []
    for values, runs in group_runs(done, keys) if complete else []:
        finals = [r.final_accuracy for r in runs if r.final_accuracy is not None]
        m, s = mean_std(finals) if finals else (None, None)
        rows.append(
            Row(
                dict(zip(keys, values, strict=True)),
                runs,
                m,
                s,
                [r.rounds_to(target) for r in runs],
                sum(r.bytes_per_peer() for r in runs) / len(runs),
                sum(r.bytes_total() for r in runs) / len(runs),
            )
        )
    return keys, rows, incomplete


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def fmt_accuracy(row: Row) -> str:
    """``93.56 ± 0.12`` (percent; no ± for one seed)."""
    if row.accuracy_mean is None:
        return "—"
    out = f"{100 * row.accuracy_mean:.2f}"
    return out if row.accuracy_std is None else f"{out} ± {100 * row.accuracy_std:.2f}"


def fmt_rounds(row: Row) -> str:
    """``12`` / ``12.3 ± 1.5`` when every seed reached the target; ``15 (2/3)`` when some did."""
    hit, n = row.reached, len(row.rounds_to_target)
    if not hit:
        return "not reached"
    m, s = mean_std([float(x) for x in hit])
    out = _num(m) if s is None or s == 0 else f"{m:.1f} ± {s:.1f}"
    return out if len(hit) == n else f"{out} ({len(hit)}/{n})"


def _target_pct(target: float) -> str:
    return f"{100 * target:g}%"


def _context(rs: RunSet, keys: list[str]) -> str:
    return ", ".join(shared_settings(rs, keys, rounds=True))


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(rs: RunSet, keys: list[str], rows: list[Row], incomplete: list[RunData], target: float) -> str:
    """The report as Markdown: a title, the shared settings, the table, and what each column means."""
    head = [label(k) for k in keys] + [
        "runs",
        "final accuracy (%)",
        f"rounds to {_target_pct(target)}",
        "bytes sent / peer",
        "bytes sent (all peers)",
    ]
    align = ["---"] * len(keys) + ["---:"] * 5
    lines = [f"## fedsim report: {rs.title}", ""]
    ctx = _context(rs, keys)
    if ctx:
        lines += [ctx, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = [fmt_value(row.config[k]) for k in keys] + [
            str(len(row.runs)),
            fmt_accuracy(row),
            fmt_rounds(row),
            human_bytes(row.bytes_per_peer),
            human_bytes(row.bytes_total),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "Final accuracy: mean test accuracy of the honest peers at the last evaluation; mean ± sample "
        "standard deviation over the runs (seeds). "
        f"Rounds to {_target_pct(target)}: first round (counting from 1) whose mean honest accuracy "
        f"is ≥ {_target_pct(target)}, averaged over the runs that reached it ((k/n): k of n runs did). "
        "Bytes: sent over all rounds, mean over runs (KiB = 1024 B).",
    ]
    if incomplete:
        names = ", ".join(r.name for r in incomplete[:5]) + (", ..." if len(incomplete) > 5 else "")
        lines += ["", f"{len(incomplete)} incomplete run(s) left out (no summary.json): {names}"]
    return "\n".join(lines) + "\n"


def to_csv(keys: list[str], rows: list[Row], target: float) -> str:
    """The same numbers, unrounded, one row per configuration (for pandas / LaTeX tables)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        keys
        + [
            "runs",
            "final_accuracy_mean",
            "final_accuracy_std",
            "rounds_to_target_mean",
            "runs_reaching_target",
            "bytes_sent_per_peer",
            "bytes_sent_total",
            "target",
        ]
    )
    for row in rows:
        hit = row.reached
        w.writerow(
            [fmt_value(row.config[k]) for k in keys]
            + [
                len(row.runs),
                "" if row.accuracy_mean is None else row.accuracy_mean,
                "" if row.accuracy_std is None else row.accuracy_std,
                sum(hit) / len(hit) if hit else "",
                len(hit),
                row.bytes_per_peer,
                row.bytes_total,
                target,
            ]
        )
    return buf.getvalue()


@click.command(short_help="Markdown table of a run or sweep: accuracy, rounds to target, bytes.")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--target",
    default=0.9,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=100),
    help="Target mean honest accuracy for 'rounds to target' (a fraction, or a percentage if > 1).",
)
@click.option(
    "--by",
    multiple=True,
    metavar="KEY",
    help="Group rows by these scenario keys (repeatable; default: every key that varies except seed).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv"]),
    default="markdown",
    show_default=True,
    help="Markdown table, or CSV with unrounded numbers.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default: stdout).")
def report(directory: Path, target: float, by: tuple[str, ...], fmt: str, out: Path | None) -> None:
    """Table of DIRECTORY (a run or a sweep from `fedsim sweep`): final accuracy (mean ± std over
    seeds), rounds to --target accuracy, and bytes sent, one row per configuration.

    \b
    Examples:
      fedsim report runs/quickstart-sweep                   Markdown to stdout
      fedsim report runs/quickstart-sweep --target 0.8 --out results.md
      fedsim report runs/quickstart-sweep --by strategy.name --by peers.attack.name
      fedsim report runs/quickstart-sweep --format csv > results.csv   (unrounded numbers)

    Only complete runs (with summary.json) are counted; the table says how many were left out.
    """
    if target > 1:
        target /= 100
    try:
        rs = load_runs(directory)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    keys, rows, incomplete = summarize(rs, target, list(by) or None)
    if not rows:
        raise click.ClickException(f"{directory}: no complete run (with summary.json) yet")
    text = to_markdown(rs, keys, rows, incomplete, target) if fmt == "markdown" else to_csv(keys, rows, target)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------- probes.json as Markdown
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
        out += ["", _format_methods(e["methods"])]
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


def _format_methods(methods: dict[str, Any]) -> str:
    """Unlearning methods against the retrained head (KL(retrained ‖ method), top-1 disagreement)."""
    rows = []
    for name, r in methods.items():
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


def format_probes(records: Any) -> str:
    """Markdown tables of a parsed ``probes.json`` (a list of entries, or one entry): the built-in
    kinds' tables here, a registered probe's own ``markdown(entry)`` where it has one (a plugin
    loaded in this process), else its entry's scalar fields."""
    from fedsim.probe_registry import kinds

    REGISTRY = kinds()  # the built-ins registered (federated_unlearning's markdown)
    entries = [records] if isinstance(records, dict) else list(records or [])
    parts = []
    for e in entries:
        if not isinstance(e, dict) or not e.get("records"):
            continue
        kind = e.get("kind")
        own = getattr(REGISTRY.get(kind), "markdown", None) if kind not in _PROBE_MARKDOWN else None
        text = _PROBE_MARKDOWN[kind](e) if kind in _PROBE_MARKDOWN else own(REGISTRY[kind](), e) if own else None
        parts.append(text if text is not None else _format_generic(e))
    return "\n\n".join(parts) + ("\n" if parts else "")
