"""Where the leaver's influence sits, and what the Newton removal does about it, peer by peer.

Trains a scenario with an unlearning probe (default ``scenarios/unlearning.yaml``, engine.backend
local, probes not run), retrains it without the probe's leaver (as the probe does), and for every
honest peer ``j`` other than the leaver prints ``KL(retrained_j ‖ trained_j)`` on the forget set,
its natural part and its planted canaries, and on the retained data, with the share of each gap
that the damped Newton removal (:func:`attacks.probes.newton_removal`, the probe's ``newton``
method) closes at ``j``; then the mean per hop distance from the leaver. At the probe's target
it also prints the Newton removal for several damping values ``λ`` and multiples of the step.
The control is the first row of every peer: doing nothing. Last, re-contamination: the Newton
removal at the leaver's neighbours / within 2 hops / everywhere / nowhere (the control), then R
rounds of plain averaging without the leaver and without local training (:func:`regossip`).

    PYTHONPATH=. python benchmarks/unlearning_by_hop.py [scenario.yaml] [--set key=value ...]

Measured numbers and their reading: docs/probes.md ("Why Newton closes only part of the gap").
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap_ = _cli.parser(__doc__)
    ap_.add_argument("scenario", nargs="?", type=_cli.existing_file, default="scenarios/unlearning.yaml")
    ap_.add_argument("--set", action="append", default=[], type=_cli.key_value, metavar="KEY=VALUE")
    ap_.add_argument("--damping", type=_cli.positive, default=1e-3)
    ap_.add_argument("--rounds", type=_cli.indices, default=[0, 1, 5, 20],
                     help="gossip rounds after unlearning to report (comma-separated)")
    return ap_.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import torch  # noqa: E402

import attacks.probes as ap  # noqa: E402
import fedsim.probes as fp  # noqa: E402
from fedsim import scenario as sc_mod  # noqa: E402
from fedsim.runner import Run  # noqa: E402


def _gap(ref: torch.Tensor, theta: torch.Tensor, splits: dict[str, torch.Tensor], ctx: fp._Ctx) -> dict[str, float]:
    return ap.function_gap(ref, theta, splits, ctx.layer_shape, ctx.bias)["kl_to_retrained"]


def main(args: argparse.Namespace | None = None) -> None:
    args = _args() if args is None else args
    overrides = sc_mod.parse_sets(["engine.backend=local", *args.set])
    sc = sc_mod.load(args.scenario, overrides)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(sc, Path(tmp) / "run", run_probes=False, keep_train=True)  # (its probe context reads x_train)
        run.create_dir(overwrite=True)
        run.execute()
        ctx = fp._context(run, run.prepared, run.final_params, retrain=run.retrain_without)
        peer = fp._default_leaver(ctx)
        retrained = torch.from_numpy(fp._retrain_without(0, ctx, peer)).to(torch.float64)
    target = fp._default_unlearn_target(0, ctx, peer)
    shape, bias = ctx.layer_shape, ctx.bias
    forget = ctx.peer_data([peer])
    retain = ctx.peer_data([j for j in range(ctx.n) if ctx.honest[j] and j != peer])
    splits = {"forget": forget[0], "retain": retain[0]}
    if ctx.canaries is not None and ctx.canaries.peer == peer:
        is_can = torch.from_numpy(np.isin(ctx.train_idx[peer], ctx.canaries.member_idx))
        splits |= {"natural": forget[0][~is_can], "canaries": forget[0][is_can]}
    hops = fp.hop_distances(fp.in_neighbors(ctx.topology), peer)
    names = list(splits)
    print(f"leaver {peer}, target {target}, damping {args.damping}")
    print("| peer | hop | " + " | ".join(f"KL {k} (none)" for k in names) + " | "
          + " | ".join(f"Newton closes ({k})" for k in names) + " |")
    print("|---" * (2 + 2 * len(names)) + "|")
    rows = []
    for j in np.flatnonzero(ctx.honest):
        if j == peer:
            continue
        before = ctx.final_params[j]
        k0 = _gap(retrained[j], before, splits, ctx)
        newton, _ = ap.newton_removal(before, shape, bias, forget, retain, damping=args.damping)
        k1 = _gap(retrained[j], newton, splits, ctx)
        closed = [1 - k1[k] / k0[k] for k in names]
        rows.append((hops[j], [k0[k] for k in names], closed))
        print(f"| {j} | {hops[j]} | " + " | ".join(f"{k0[k]:.4f}" for k in names) + " | "
              + " | ".join(f"{c:+.1%}" for c in closed) + " |")
    print("\nmean per hop\n| hop | peers | " + " | ".join(f"KL {k} (none)" for k in names) + " | "
          + " | ".join(f"Newton closes ({k})" for k in names) + " |")
    print("|---" * (2 + 2 * len(names)) + "|")
    for h in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == h]
        kl = np.mean([r[1] for r in sel], 0)
        cl = np.mean([r[2] for r in sel], 0)
        print(f"| {h} | {len(sel)} | " + " | ".join(f"{v:.4f}" for v in kl) + " | "
              + " | ".join(f"{v:+.1%}" for v in cl) + " |")
    before = ctx.final_params[target]
    k0 = _gap(retrained[target], before, splits, ctx)
    print(f"\nat the target {target}: share of the forget-set KL gap closed\n| Newton variant | "
          + " | ".join(names) + " | test acc. |")
    print("|---" * (2 + len(names)) + "|")
    xt, yt = ctx.x_test, ctx.y_test

    def row(label: str, theta: torch.Tensor) -> None:
        k1 = _gap(retrained[target], theta, splits, ctx)
        acc = ap.accuracy(ap.head_logits(theta, xt, shape, bias), yt)
        print(f"| {label} | " + " | ".join(f"{1 - k1[k] / k0[k]:+.1%}" for k in names) + f" | {acc:.1%} |")

    for lam in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1):
        row(f"λ = {lam:g}", ap.newton_removal(before, shape, bias, forget, retain, damping=lam)[0])
    step = ap.newton_removal(before, shape, bias, forget, retain, damping=args.damping)[0] - before
    for s in (0.5, 0.75, 1.25, 1.5, 2.0):
        row(f"{s} × step (λ = {args.damping:g})", before + s * step)
    regossip(ctx, peer, hops, retrained, splits, args.damping, args.rounds)


def regossip(ctx: fp._Ctx, peer: int, hops: np.ndarray, retrained: torch.Tensor, splits: dict[str, torch.Tensor],
             damping: float, rounds: list[int]) -> None:
    """Re-contamination through gossip, *averaging only*: who unlearns (nobody — the control —, the
    leaver's neighbours, peers within 2 hops, everyone) by the Newton removal, then ``R`` rounds of
    the scenario's plain averaging over round-``40 + r`` in-neighbours without the leaver (its
    messages no longer arrive) and **without further local training** (a departure: the federation
    keeps averaging, nobody trains). Printed: mean KL(retrained_j ‖ θ_j) per hop on the forget set's
    natural part and canaries."""
    shape, bias = ctx.layer_shape, ctx.bias
    forget = ctx.peer_data([peer])
    retain = ctx.peer_data([j for j in range(ctx.n) if ctx.honest[j] and j != peer])
    honest = [j for j in np.flatnonzero(ctx.honest) if j != peer]
    newton = {j: ap.newton_removal(ctx.final_params[j], shape, bias, forget, retain, damping=damping)[0]
              for j in honest}
    policies = {"nobody (control)": 0, "neighbours": 1, "within 2 hops": 2, "everyone": 99}
    hop_set = sorted({int(hops[j]) for j in honest})
    names = [k for k in ("natural", "canaries", "forget") if k in splits][:2]
    print(f"\nre-contamination (averaging only, no local training): mean KL(retrained ‖ θ) per hop, "
          f"{' / '.join(names)}")
    print("| who unlearns | R | " + " | ".join(f"hop {h}" for h in hop_set) + " |")
    print("|---" * (2 + len(hop_set)) + "|")
    for label, k in policies.items():
        theta = ctx.final_params.clone()
        for j in honest:
            if hops[j] <= k:
                theta[j] = newton[j]
        done = 0
        for r in sorted(rounds):
            while done < r:
                nb = fp.in_neighbors(ctx.topology, ctx.rounds + done)
                new = theta.clone()
                for j in honest:
                    senders = [int(i) for i in nb[j] if int(i) != peer and ctx.honest[int(i)]]
                    new[j] = theta[[j, *senders]].mean(0)
                theta, done = new, done + 1
            cells = []
            for h in hop_set:
                at = [j for j in honest if hops[j] == h]
                kl = [[ap.kl_and_disagreement(retrained[j], theta[j], splits[n], shape, bias)[0] for n in names]
                      for j in at]
                m = np.mean(kl, 0)
                cells.append(" / ".join(f"{v:.4f}" for v in m))
            print(f"| {label} | {r} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(ARGS)
