"""Seed-to-seed intervals for ``gossip_cloning`` probes with colluders: reads the ``probes.json`` of
runs of one scenario at different seeds and prints, per probe (colluders, unknowns model,
estimator), the relative error of the reconstruction and of the controls to the target's round-T−1
head (mean over pairs, then seeds), the paired gains (control − reconstruction; > 0: the attack is
closer) with their 95% t-interval over seeds, and GLS's gain over least squares on the same
coalitions and targets (same colluders and unknowns model).

    for s in 0 1 2; do fedsim run scenarios/gossip_colluders.yaml --set seed=$s --out runs/gc/s$s -q; done
    PYTHONPATH=. python benchmarks/gossip_colluders_seeds.py runs/gc/s0 runs/gc/s1 runs/gc/s2

Reading: docs/probes.md, "gossip_cloning", "Colluders and GLS".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script
import numpy as np

from benchmarks.federated_unlearning_seeds import mean_ci

CONTROLS = ("own_head", "observed_mean", "other_peer")


def ci(values: list[float]) -> str:
    """``mean [lo, hi]`` (95% t-interval over seeds; the mean alone for one value, – for none)."""
    if not values:
        return "–"
    m, half = mean_ci(values)
    return f"{m:+.3f}" if len(values) < 2 else f"{m:+.3f} [{m - half:+.3f}, {m + half:+.3f}]"


def load(run_dirs: list[str]) -> list[list[dict[str, Any]]]:
    """Per run, its gossip_cloning entries in scenario order."""
    return [[e for e in json.loads((Path(d) / "probes.json").read_text()) if e["kind"] == "gossip_cloning"]
            for d in run_dirs]


def key(e: dict[str, Any]) -> tuple[int, str, str]:
    return e.get("colluders", 1), e["updates"], e.get("estimator", "ls")


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("runs", nargs="+", type=_cli.existing_dir, help="run directories (one per seed)")
    args = ap.parse_args()
    runs = load(args.runs)
    rule = runs[0][0]["run_rule"]
    print(f"{len(runs)} seeds, run rule {rule}; relative error to the target's round-T−1 head (mean over "
          "pairs, then seeds); gain = control − reconstruction, 95% t-interval over seeds\n")
    print("| colluders | unknowns | estimator | pairs / seed | exact | deficiency | estimate | own head | observed "
          "mean | other peer | gain vs own head | gain vs observed mean | gain vs other peer |")
    print("|---" * 13 + "|")
    by_key: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for e in run:
            by_key.setdefault(key(e), []).append(e)
    for k, entries in by_key.items():
        cells = [e["records"][str(e["rounds"])]["all"] for e in entries]
        got = [c for c in cells if c["pairs"]]
        if not got:
            print(f"| {k[0]} | {k[1]} | {k[2]} | 0 | " + " | ".join(["–"] * 9) + " |")
            continue
        err = np.mean([c["reconstruction"]["rel_error"] for c in got])
        ctl = [np.mean([c["controls"][x]["rel_error"] for c in got if c["controls"][x]["rel_error"] is not None])
               if any(c["controls"][x]["rel_error"] is not None for c in got) else float("nan") for x in CONTROLS]
        gains = [ci([c["effect"][x]["rel_error"]["mean"] for c in got if c["effect"][x]["rel_error"]["mean"]
                     is not None]) for x in CONTROLS]
        pairs = "/".join(str(c["pairs"]) for c in cells)
        exact = np.mean([c["identifiable"]["exact_share"] for c in got])
        defi = np.mean([c["identifiable"]["mean_deficiency"] for c in got])
        print(f"| {k[0]} | {k[1]} | {k[2]} | {pairs} | {exact:.2f} | {defi:.0f} | {err:.3f} | "
              + " | ".join(f"{v:.3f}" for v in ctl) + " | " + " | ".join(gains) + " |")
    print("\nGLS − LS on the same coalitions and targets (LS error − GLS error; > 0: GLS closer), 95% t-interval "
          "over seeds\n")
    print("| colluders | unknowns | LS error | GLS error | gain |")
    print("|---" * 5 + "|")
    for (c, upd, est), entries in by_key.items():
        ls = by_key.get((c, upd, "ls"))
        if est != "gls" or ls is None:
            continue
        diffs, e_ls, e_gls = [], [], []
        for a, b in zip(ls, entries, strict=True):
            ca, cb = a["records"][str(a["rounds"])]["all"], b["records"][str(b["rounds"])]["all"]
            if ca["pairs"] and cb["pairs"]:
                e_ls.append(ca["reconstruction"]["rel_error"])
                e_gls.append(cb["reconstruction"]["rel_error"])
                diffs.append(e_ls[-1] - e_gls[-1])
        if diffs:
            print(f"| {c} | {upd} | {np.mean(e_ls):.3f} | {np.mean(e_gls):.3f} | {ci(diffs)} |")


if __name__ == "__main__":
    main()
