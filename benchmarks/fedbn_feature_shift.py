"""FedBN (``model.bn: local``) against FedAvg (``model.bn: exchanged``) under a feature shift
(``dataset.domains``): reads runs of ``scenarios/fedbn_feature_shift.yaml`` at several seeds, prints
the mean own-domain test accuracy per evaluated round and at the end for each arm with its 95%
t-interval over seeds, the paired (by seed) difference FedBN − FedAvg with its t-interval, and each
domain's final accuracy (its peers' mean, then seeds); draws accuracy vs round, both arms, with the
interval as a band (``--out``), the no-shift control in a second panel when given.

    for bn in exchanged local; do for s in 0 1 2; do
      fedsim run -q scenarios/fedbn_feature_shift.yaml --set model.bn=$bn --set seed=$s --out runs/fedbn/shift-$bn-s$s
      fedsim run -q scenarios/fedbn_feature_shift.yaml --set model.bn=$bn --set seed=$s \\
        --set 'dataset.domains=[identity]' --out runs/fedbn/noshift-$bn-s$s
    done; done
    PYTHONPATH=. python benchmarks/fedbn_feature_shift.py --runs runs/fedbn --seeds 0 1 2 \\
      --out docs/figures/fedbn_feature_shift.png

Reading: docs/whole-model.md, "Feature shift: FedBN against FedAvg".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script
import panel_figure  # benchmarks/ is on sys.path when run as a script
from federated_unlearning_seeds import mean_ci

from fedsim.plot import OKABE_ITO

ARMS = {"exchanged": "FedAvg (bn: exchanged)", "local": "FedBN (bn: local)"}


def load(run: Path) -> tuple[dict[int, float], dict[str, float], dict[str, Any]]:
    """``(round → mean own-domain accuracy, domain → its peers' mean final accuracy, summary)`` of one run."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = {r["round"]: r["accuracy_mean"] for r in recs if "accuracy_mean" in r}
    summary = json.loads((run / "summary.json").read_text())
    last = next(r for r in reversed(recs) if "per_peer" in r)
    names = peer_domains(run)
    per: dict[str, list[float]] = {}
    for peer, acc in last["per_peer"].items():
        per.setdefault(names[int(peer)], []).append(acc)
    return curve, {d: sum(v) / len(v) for d, v in per.items()}, summary


def peer_domains(run: Path) -> list[str]:
    """Each peer's domain, as the run assigned them (``fedsim.data.domains.peer_domains`` over the
    resolved scenario)."""
    from fedsim.data.domains import peer_domains as assign
    from fedsim.yamlsafe import read_yaml

    sc = read_yaml(run / "scenario.yaml")
    return assign(sc["peers"]["count"], sc["dataset"]["domains"])


def fmt(values: list[float]) -> str:
    m, h = mean_ci(values)
    return f"{100 * m:.2f} ± {100 * h:.2f}"


def table(runs: Path, cond: str, seeds: list[int]) -> dict[str, dict[int, list[float]]]:
    """Print the condition's tables; returns arm → round → accuracies over seeds."""
    curves: dict[str, dict[int, list[float]]] = {}
    finals: dict[str, list[float]] = {}
    doms: dict[str, dict[str, list[float]]] = {}
    for bn in ARMS:
        for s in seeds:
            curve, per_dom, _ = load(runs / f"{cond}-{bn}-s{s}")
            for r, a in curve.items():
                curves.setdefault(bn, {}).setdefault(r, []).append(a)
            finals.setdefault(bn, []).append(curve[max(curve)])
            for d, a in per_dom.items():
                doms.setdefault(bn, {}).setdefault(d, []).append(a)
    print(f"\n## {cond} ({len(seeds)} seeds {seeds}; mean own-domain test accuracy, %, 95% t-interval over seeds)\n")
    print("| rounds | " + " | ".join(ARMS.values()) + " | FedBN − FedAvg (paired, points) |")
    print("|---:|---:|---:|---:|")
    for r in sorted(curves["exchanged"]):
        diff = [b - a for a, b in zip(curves["exchanged"][r], curves["local"][r], strict=True)]
        print(f"| {r + 1} | {fmt(curves['exchanged'][r])} | {fmt(curves['local'][r])} | {fmt(diff)} |")
    print("\nfinal, per seed:", {bn: [round(100 * a, 2) for a in v] for bn, v in finals.items()})
    print("\n| domain | " + " | ".join(ARMS.values()) + " | FedBN − FedAvg (paired, points) |")
    print("|---|---:|---:|---:|")
    for d in doms["exchanged"]:
        diff = [b - a for a, b in zip(doms["exchanged"][d], doms["local"][d], strict=True)]
        print(f"| {d} | {fmt(doms['exchanged'][d])} | {fmt(doms['local'][d])} | {fmt(diff)} |")
    return curves


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--runs", type=_cli.existing_dir, required=True,
                    help="folder of <cond>-<bn>-s<seed> run directories")
    ap.add_argument("--seeds", type=_cli.index, nargs="+", default=[0, 1, 2])
    ap.add_argument("--conds", nargs="+", default=["shift", "noshift"], help="conditions present under --runs")
    ap.add_argument("--out", type=Path, default=None, help="figure (PNG)")
    args = ap.parse_args()
    panels = [(cond, table(args.runs, cond, args.seeds)) for cond in args.conds]
    if args.out is None:
        return
    titles = {"shift": "feature shift: 5 domains, 2 peers each", "noshift": "control: no shift (identity)"}
    fig, axes = panel_figure.panels(len(panels), 4.4)
    for ax, (cond, curves) in zip(axes, panels, strict=True):
        for k, (bn, label) in enumerate(ARMS.items()):
            rs = sorted(curves[bn])
            pts = [mean_ci(curves[bn][r]) for r in rs]
            m = [100 * p[0] for p in pts]
            lo = [100 * (p[0] - p[1]) for p in pts]
            hi = [100 * (p[0] + p[1]) for p in pts]
            color = OKABE_ITO[k % len(OKABE_ITO)]
            ax.plot([r + 1 for r in rs], m, marker="o", ms=3, color=color, label=label)
            ax.fill_between([r + 1 for r in rs], lo, hi, color=color, alpha=0.25, lw=0)
        ax.set_title(f"{titles.get(cond, cond)}\nmean of {len(args.seeds)} seeds, 95% t-band", fontsize=9)
        ax.set_xlabel("rounds")
        ax.grid(alpha=0.3)
    panel_figure.save(fig, axes, args.out, "own-domain test accuracy, %", "lower right")


if __name__ == "__main__":
    main()
