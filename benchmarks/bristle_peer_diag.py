"""Per-peer diagnosis of a Bristle run on class windows: which classes each honest peer recognises
at the end, and how its own model scores its local validation samples.

For each seed: runs the scenario in-process (``fedsim.api.run``, a temporary directory) and, from
the final heads, prints per honest peer its held classes, its test accuracy, its recall of every
class on the test digits, and the recall of its own head on each held class's validation samples
(the metric Bristle's integrator scores candidates with), and the directed links between honest
peers sharing a class to which default Bristle gives weight 0 on every class at the end
(``Bristle.integration_weights`` of the final heads' recalls on the receiver's validation split,
the sender scored on ``|F_i ∩ F_j|`` classes). Example (issue 14, the 2-class seed 2)::

    FEDSIM_DL4J_BACKBONE=/tmp/transfer-mnist python benchmarks/bristle_peer_diag.py \\
        --scenario scenarios/bristle-repro/windows2.yaml --seeds 0,2 \\
        --set backbone.name=authors_emnist_cnn --plugin benchmarks/dl4j_backbone.py
"""

from __future__ import annotations

import argparse
import tempfile

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--scenario", required=True, type=_cli.existing_file)
    ap.add_argument("--seeds", type=_cli.indices, default="0,1,2")
    ap.add_argument("--set", action="append", default=[], type=_cli.key_value, help="KEY=VALUE override (YAML value)")
    ap.add_argument("--strategy", default="bristle")
    ap.add_argument("--plugin", action="append", default=[], help="plugin file or module (as fedsim run --plugin)")
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import strategies  # noqa: E402
from fedsim import api  # noqa: E402
from fedsim.prepare import prepare  # noqa: E402
from fedsim.scenario import byzantine_mask, partition_for  # noqa: E402


def recall(w: np.ndarray, x: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:
    pred = (x @ w.T).argmax(1)
    return np.array([(pred[y == k] == k).mean() if (y == k).any() else np.nan for k in range(c)])


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    over = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
    over["strategy.name"] = a.strategy
    for seed in a.seeds:
        sc = api.resolve(a.scenario, {**over, "seed": seed}, plugins=a.plugin)
        res = api.run(sc, out=tempfile.mkdtemp(prefix="diag-") + "/r")
        prep = prepare(sc)
        ft = prep.features
        byz = byzantine_mask(sc)
        part = partition_for(sc, ft.y_train, byz)
        c, d = ft.num_classes, ft.dim
        heads = res.final_params[:, : c * d].reshape(-1, c, d)
        print(f"## seed {seed}: final mean honest accuracy {100 * res.summary['final_accuracy_mean']:.2f}%")
        print("peer | held | test acc | test recall per class 0-9 (%) | own head's validation recall per held class")
        recs = []
        for j in np.flatnonzero(~byz):
            held = sorted(set(ft.y_train[part.train[j]].tolist()))
            r = recall(heads[j], ft.x_test, ft.y_test, c)
            recs.append(r)
            vx, vy = ft.x_train[part.val[j]], ft.y_train[part.val[j]]
            vr = recall(heads[j], vx, vy, c)
            acc = ((ft.x_test @ heads[j].T).argmax(1) == ft.y_test).mean()
            print(f"{j} | {held} | {100 * acc:.1f} | {' '.join(f'{100 * v:3.0f}' for v in r)} | "
                  f"{', '.join(f'{k}: {vr[k]:.2f} (n={int((vy == k).sum())})' for k in held)}")
        print(f"mean recall per class over honest peers: {' '.join(f'{100 * v:3.0f}' for v in np.mean(recs, 0))}")
        rule = strategies.build("bristle")
        held = {j: set(ft.y_train[part.train[j]].tolist()) for j in np.flatnonzero(~byz)}
        cut = []
        for i, fi in held.items():
            o = torch.from_numpy(np.nan_to_num(recall(heads[i], ft.x_train[part.val[i]], ft.y_train[part.val[i]], c)))
            fam = torch.zeros(c, dtype=torch.bool)
            fam[sorted(fi)] = True
            for j, fj in held.items():
                if j == i or not fi & fj:
                    continue
                m = np.nan_to_num(recall(heads[j], ft.x_train[part.val[i]], ft.y_train[part.val[i]], c))
                w = rule.integration_weights(o, torch.from_numpy(m)[None], fam, torch.tensor([len(fi & fj)]))
                if float(w.sum()) == 0:
                    cut.append(f"{j}{sorted(fj)}->{i}{sorted(fi)}")
        print(f"links with weight 0: {len(cut)} {cut}")


if __name__ == "__main__":
    main(ARGS)
