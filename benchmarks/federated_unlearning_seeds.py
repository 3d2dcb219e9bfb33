"""Seed-to-seed intervals for the ``federated_unlearning`` probe: reads the ``probes.json`` of runs
of one scenario at different seeds and prints, per arm, rounds after unlearning ``R`` and hop
distance from the leaver, the mean over seeds of ``KL(retrained ‖ θ)`` on each split and of the
arm's difference to the control with its 95% t-interval (seeds as the unit; ``n − 1`` degrees of
freedom), the share of the control's KL each arm closes (``1 − KL(arm) / KL(control)``, same
interval), and the canary membership advantage (mean over the hop's peers, then seeds) beside the
retrained federation's. ``--versus`` adds, per arm, ``R`` and hop, these runs minus the runs of
another method at the same seeds (same order; paired by seed, 95% t-interval): canary advantage
and forget-canary KL.

    for s in 0 1 2; do fedsim run scenarios/federated_unlearning.yaml --set seed=$s --out runs/fu/s$s -q; done
    PYTHONPATH=. python benchmarks/federated_unlearning_seeds.py runs/fu/s0 runs/fu/s1 runs/fu/s2

Reading: docs/probes.md, "federated_unlearning".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script
import numpy as np

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """``(mean, half-width of the 95% t-interval)`` over ``values`` (half-width 0 for one value)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), T95.get(len(v) - 1, 1.96) * float(v.std(ddof=1)) / math.sqrt(len(v))


def interval(values: list[float]) -> str:
    """``mean [lo, hi]`` with the 95% t-interval over ``values`` (just the mean for one value)."""
    m, half = mean_ci(values)
    if len(values) < 2:
        return f"{m:+.4f}"
    return f"{m:+.4f} [{m - half:+.4f}, {m + half:+.4f}]"


def load(run_dirs: list[str]) -> list[dict[str, Any]]:
    out = []
    for d in run_dirs:
        entries = json.loads((Path(d) / "probes.json").read_text())
        out.append(next(e for e in entries if e["kind"] == "federated_unlearning"))
    return out


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("runs", nargs="+", type=_cli.existing_dir, help="run directories (one per seed)")
    ap.add_argument("--splits", default="forget_natural,forget_canaries,test")
    ap.add_argument("--versus", metavar="DIR,DIR,...", help="runs of another method at the same seeds, same order")
    args = ap.parse_args()
    entries = load(args.runs)
    splits = [s for s in args.splits.split(",") if s in entries[0]["splits"]]
    arms, rounds = entries[0]["arms"], [str(r) for r in entries[0]["rounds_after"]]
    hops = sorted({g for e in entries for g in e["records"][arms[0]]["rounds"][rounds[0]]}, key=str)
    print(f"{len(entries)} seeds; leavers {[e['peer'] for e in entries]}; method {entries[0]['method']}")
    for split in splits:
        print(f"\n### KL(retrained ‖ θ) on {split}: mean over seeds; arm − control, 95% t-interval over seeds\n")
        print("| arm | R | " + " | ".join(f"hop {h}" for h in hops) + " |")
        print("|---" * (2 + len(hops)) + "|")
        for arm in arms:
            for r in rounds:
                cells = []
                for h in hops:
                    got = [e["records"][arm]["rounds"][r].get(h) for e in entries]
                    got = [c for c in got if c is not None]
                    kl = np.mean([c["kl_to_retrained"][split] for c in got])
                    if arm == "0" or "kl_minus_control" not in got[0]:
                        cells.append(f"{kl:.4f}")
                    else:
                        cells.append(f"{kl:.4f} (Δ {interval([c['kl_minus_control'][split] for c in got])})")
                print(f"| {arm} | {r} | " + " | ".join(cells) + " |")
    print("\n### share of the control's KL(retrained ‖ θ) closed, 1 − KL(arm) / KL(control): mean over seeds "
          "[95% t-interval]\n")
    print("| split | arm | R | " + " | ".join(f"hop {h}" for h in hops) + " |")
    print("|---" * (3 + len(hops)) + "|")
    for split in splits:
        for arm in arms:
            if arm == "0":
                continue
            for r in rounds:
                cells = []
                for h in hops:
                    pairs = [(e["records"][arm]["rounds"][r].get(h), e["records"]["0"]["rounds"][r].get(h))
                             for e in entries if "0" in e["records"]]
                    closed = [1 - a["kl_to_retrained"][split] / c["kl_to_retrained"][split] for a, c in pairs
                              if a is not None and c is not None and c["kl_to_retrained"][split] > 0]
                    m, half = mean_ci(closed) if closed else (float("nan"), 0.0)
                    cells.append(f"{m:.1%} [{m - half:.1%}, {m + half:.1%}]" if len(closed) > 1 else f"{m:.1%}")
                print(f"| {split} | {arm} | {r} | " + " | ".join(cells) + " |")
    if entries[0].get("retrained_canary_membership"):
        print("\n### canary loss-threshold advantage (mean over the hop's peers, then seeds; [null q95]; share of "
              "peers with p < 0.01; arm − control with its 95% t-interval over seeds)\n")
        print("| model | R | " + " | ".join(f"hop {h}" for h in hops) + " |")
        print("|---" * (2 + len(hops)) + "|")
        for arm in [*arms, "retrained"]:
            for r in rounds:
                cells = []
                for h in hops:
                    if arm == "retrained":
                        got = [e["retrained_canary_membership"][r].get(h) for e in entries]
                    else:
                        got = [(e["records"][arm]["rounds"][r].get(h) or {}).get("canary_membership") for e in entries]
                    got = [c for c in got if c is not None]
                    adv, q95 = np.mean([c["advantage"] for c in got]), np.mean([c["null_q95"] for c in got])
                    cell = f"{adv:+.3f} [{q95:.3f}]"
                    if arm != "retrained":
                        cell += f" {np.mean([c['significant_share'] for c in got]):.0%}"
                    if arm not in ("0", "retrained"):
                        ctrl = [e["records"]["0"]["rounds"][r][h]["canary_membership"]["advantage"] for e in entries
                                if h in e["records"]["0"]["rounds"][r]]
                        cell += f" (Δ {interval([c['advantage'] - b for c, b in zip(got, ctrl, strict=True)])})"
                    cells.append(cell)
                print(f"| {arm} | {r} | " + " | ".join(cells) + " |")
    if args.versus:
        versus(entries, load(args.versus.split(",")), arms, rounds, hops)


def versus(entries: list[dict[str, Any]], others: list[dict[str, Any]], arms: list[str], rounds: list[str],
           hops: list[Any]) -> None:
    """These runs minus ``others`` (another method, the same seeds in the same order), paired by seed."""
    if len(others) != len(entries) or any(a["peer"] != b["peer"] for a, b in zip(entries, others, strict=True)):
        raise SystemExit("--versus: give the same seeds in the same order (the leavers differ)")
    print(f"\n### {entries[0]['method']} − {others[0]['method']}, paired by seed (95% t-interval): canary "
          "advantage; KL(retrained ‖ θ) on forget_canaries\n")
    print("| arm | R | " + " | ".join(f"hop {h}" for h in hops) + " |")
    print("|---" * (2 + len(hops)) + "|")
    for arm in arms:
        if arm == "0" or any(arm not in o["records"] for o in others):
            continue
        for r in rounds:
            cells = []
            for h in hops:
                a = [e["records"][arm]["rounds"][r][h] for e in entries]
                b = [o["records"][arm]["rounds"][r][h] for o in others]
                adv = [x["canary_membership"]["advantage"] - y["canary_membership"]["advantage"]
                       for x, y in zip(a, b, strict=True)] if "canary_membership" in a[0] else None
                kl = [x["kl_to_retrained"]["forget_canaries"] - y["kl_to_retrained"]["forget_canaries"]
                      for x, y in zip(a, b, strict=True)] if "forget_canaries" in a[0]["kl_to_retrained"] else None
                cells.append(" ; ".join(interval(v) for v in (adv, kl) if v is not None))
            print(f"| {arm} | {r} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
