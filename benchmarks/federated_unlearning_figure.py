"""Figure: canary membership advantage vs rounds after the leaver left, one line per arm (who
unlearned), one panel per unlearning method, from ``federated_unlearning`` runs at several seeds.

    for s in 0 1 2; do fedsim run scenarios/federated_unlearning.yaml --set seed=$s --out runs/fu/newton/s$s -q; done
    # the same with `--set probes.0.method=finetune_retain` → runs/fu/finetune/s$s,
    # and with `--set probes.0.method=gossip_rollback` → runs/fu/rollback/s$s
    PYTHONPATH=. python benchmarks/federated_unlearning_figure.py \\
        --runs newton=runs/fu/newton/s0,runs/fu/newton/s1,runs/fu/newton/s2 \\
        --runs finetune_retain=runs/fu/finetune/s0,runs/fu/finetune/s1,runs/fu/finetune/s2 \\
        --runs gossip_rollback=runs/fu/rollback/s0,runs/fu/rollback/s1,runs/fu/rollback/s2 \\
        --out docs/figures/federated_unlearning_canaries.png

Each point: the loss-threshold advantage of the leaver's canaries (members vs held-out canaries),
mean over the hop's peers (``--hop``, default 1: the leaver's neighbours), then over seeds, with
the 95% t-interval over seeds (seeds as the unit). Dashed grey: the permutation null's 95%
quantile (mean over arms, peers and seeds); dotted black: the federation retrained without the
leaver (the gold standard). Reading: docs/probes.md, "federated_unlearning".
"""

from __future__ import annotations

from pathlib import Path

import _cli  # benchmarks/ is on sys.path when run as a script
import numpy as np
import panel_figure  # benchmarks/ is on sys.path when run as a script
from federated_unlearning_seeds import load, mean_ci

from fedsim.plot import OKABE_ITO


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--runs", action="append", required=True, metavar="LABEL=DIR,DIR,...",
                    help="one panel: a label and the run directories (one per seed)")
    ap.add_argument("--hop", type=lambda t: str(_cli.index(t)), default="1",
                    help="hop distance from the leaver whose peers are averaged")
    ap.add_argument("--out", type=Path, default=Path("docs/figures/federated_unlearning_canaries.png"))
    args = ap.parse_args()
    panels = []
    for spec in args.runs:
        label, _, dirs = spec.partition("=")
        if not dirs:
            ap.error(f"argument --runs: expected LABEL=DIR,DIR,..., got {spec!r}")
        panels.append((label, load(dirs.split(","))))

    fig, axes = panel_figure.panels(len(panels), 4.2)
    for ax, (label, entries) in zip(axes, panels, strict=True):
        rs = entries[0]["rounds_after"]
        arms = entries[0]["arms"]
        nulls = []
        for k, arm in enumerate(arms):
            pts = [mean_ci([e["records"][arm]["rounds"][str(r)][args.hop]["canary_membership"]["advantage"]
                            for e in entries]) for r in rs]
            nulls += [e["records"][arm]["rounds"][str(r)][args.hop]["canary_membership"]["null_q95"]
                      for e in entries for r in rs]
            name = {"0": "nobody (control)", "all": "everyone"}.get(arm, f"within {arm} hop{'s' if arm != '1' else ''}")
            xs = [r + 0.25 * (k - (len(arms) - 1) / 2) for r in rs]  # arms side by side at each R
            ax.errorbar(xs, [p[0] for p in pts], yerr=[p[1] for p in pts], marker="o", capsize=3,
                        color=OKABE_ITO[k % len(OKABE_ITO)], label=name)
        gold = [mean_ci([e["retrained_canary_membership"][str(r)][args.hop]["advantage"] for e in entries])[0]
                for r in rs]
        ax.plot(rs, gold, ":", color="black", label="retrained (gold)")
        ax.axhline(float(np.mean(nulls)), ls="--", color="grey", label="null q95")
        ax.set_title(f"{label} ({len(entries)} seeds, hop {args.hop})", fontsize=10)
        ax.set_xlabel("rounds after the leaver left (R)")
        ax.set_xticks(rs)
    panel_figure.save(fig, axes, args.out, "canary membership advantage", "upper right")


if __name__ == "__main__":
    main()
