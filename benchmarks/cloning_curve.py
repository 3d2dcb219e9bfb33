"""The paper-shaped cloning curve: agreement (and KL) of the clone vs oracle queries, one line per
defence, from a cloning run's ``probes.json`` (Carlini et al. 2024 plot their attack's cost
against queries on a log axis in the same way).

    fedsim run scenarios/cloning.yaml
    python benchmarks/cloning_curve.py runs/cloning            # → docs/figures/cloning_curve.png

Left: agreement with the target on never-queried test inputs; right: mean KL(target ‖ clone).
Solid lines: full-logit answers (``k = all``) with one query per input, per defence; dashed: the
same noise defence with the largest number of averaged repeats (not for the after-ranking
control); dotted: the label-only defence
(``top1``) and the top-1-with-value logit-bias attack without defence. The x axis counts every
oracle row (logit-bias queries and repeats included). The horizontal line is the 99% goal; KL
below ``KL_FLOOR`` (exact clones, float error) is drawn at the floor.
Uses the first cloning entry of ``probes.json`` (``--entry`` picks another).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script

from fedsim.plot import OKABE_ITO

COLORS = [*OKABE_ITO, "#999999", "#8C564B"]
KL_FLOOR = 1e-10  # exact clones have KL ~1e-17 (float error): drawn at this floor


def curves(entry: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``label → records`` (sorted by queries) for the lines described in the module docstring."""
    recs = entry["records"]
    by: dict[tuple[str, Any, int], list[dict[str, Any]]] = {}
    for r in recs:
        by.setdefault((r["defence"], r["topk"], r.get("repeats", 1)), []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for (dname, k, reps), rs in by.items():
        max_reps = max(rr for (d, kk, rr) in by if d == dname and kk == k)
        if k is None and reps == 1:
            out[f"{dname}, full logits"] = rs
        elif k is None and reps == max_reps and reps > 1 and "after_ranking" not in dname:
            out[f"{dname}, full logits, {reps} repeats averaged"] = rs
        elif dname == "top1":
            out["top1 (label only), distillation"] = rs
        elif dname == "none" and k == 1:
            out["none, top-1 with value + logit bias"] = rs
    return {name: sorted(rs, key=lambda r: r["queries"]) for name, rs in out.items()}


def main(argv: list[str] | None = None) -> Path:
    ap = _cli.parser(__doc__)
    ap.add_argument("run", type=_cli.existing_dir, help="run directory with probes.json")
    ap.add_argument("--out", type=Path, default=Path("docs/figures/cloning_curve.png"))
    ap.add_argument("--entry", type=_cli.index, default=0, help="index among the cloning entries")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    probes = json.loads((args.run / "probes.json").read_text())
    entry = [e for e in probes if e.get("kind") == "cloning"][args.entry]
    lines = curves(entry)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_a, ax_k = fig.subplots(1, 2)
    for i, (name, rs) in enumerate(lines.items()):
        style = "--" if "repeats" in name else (":" if ("top1" in name or "top-1" in name) else "-")
        color = COLORS[i % len(COLORS)]
        q = [r["queries"] for r in rs]
        ax_a.plot(q, [100 * r["agreement"] for r in rs], style, marker="o", ms=3, color=color, label=name)
        kl = [(r["queries"], max(r["kl_divergence"], KL_FLOOR)) for r in rs if r.get("kl_divergence") is not None]
        if kl:
            ax_k.plot(*zip(*kl, strict=True), style, marker="o", ms=3, color=color)
    ax_a.axhline(99, color="#888888", lw=0.8)
    d, c = entry.get("feature_dim"), entry.get("num_classes")
    ax_a.axvline(d + 1, color="#bbbbbb", lw=0.8, ls=":")
    ax_a.set(xscale="log", xlabel="oracle queries (log)", ylabel="agreement with target (%)",
             title=f"clone vs target on unseen inputs (d + 1 = {d + 1})")
    ax_k.set(xscale="log", yscale="log", xlabel="oracle queries (log)", ylabel="KL(target ‖ clone), nats")
    th = entry.get("target_head") or {}
    what = (f"bottleneck target h = {th.get('hidden')} ({th.get('activation')})" if th.get("kind") == "bottleneck"
            else "federated linear head")
    fig.suptitle(f"Model cloning: {what}, d = {d}, C = {c}")
    fig.legend(loc="outside lower center", ncols=3, frameon=False, fontsize=8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=130)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
