"""fedsim vs Flower's own simulation engine on the same WHOLE-MODEL federated workload (issue 18).

The sibling of ``benchmarks/vs_flower.py`` (whose pieces it reuses: the scenario, the timed fedsim
run, Flower's ``run_simulation`` call, the shard file), with the whole network trained instead of
a linear head on frozen features:

* the same CNN: fedsim's ``fmnist_cnn`` network plus its linear head (two 5×5 convolutions 1→32→64,
  max-pooling, average-pooled 576 features, ``Linear(576, 10)``: 57,866 parameters), trained
  whole from a random initialisation drawn from the seed (``model: {trainable: all, init:
  scratch}``); every client starts each round from the server's model;
* the same data and partition: the MNIST digits shipped with fedsim (``mnist10k``, 8,000 train /
  2,000 test, normalised 1×28×28 inputs from :func:`fedsim.whole_plan.prepare_features`), the iid
  partition of :func:`fedsim.partition.make_partition` (seed 0);
* the same local training: 5 SGD steps of batch 32 at lr 0.1, no momentum (stateless clients in
  both engines), minibatches drawn by fedsim's counter-based RNG in both; N clients, all selected
  every round; server FedAvg = unweighted mean of the clients' models.

fedsim runs in-process (``engine: {backend: local, num_actors: 2}``: 2 peer groups, each trained
as one stacked model on 2 torch threads), and with ``--ray`` also on Ray (2 actors + the server),
once per ``--batching`` value (``model.batching``: ``vmap``, one ``torch.func.vmap(grad)`` call per
group; ``loop``, ``torch.func.grad`` per peer over the same stacked parameters; ``auto``), one
after the other and then Flower, for each N in turn (interleaved: the modes see the same load).
Flower's ClientApp (``flower_app.whole_client_app``) trains a plain
``torch.nn.Module`` per client with ``torch.optim.SGD`` and ``backward()``; Flower's own
``FedAvg`` with equal weights on the server; Ray backend, 2 CPUs, 1 CPU per client.

Per-round time: as ``vs_flower.py`` (fedsim: ``timings.jsonl``; Flower: between the evaluation
callbacks, minus the evaluation), the mean over the rounds after the first (warm-up). Accuracy:
the global model's test accuracy after the last round in both engines (the same rounds), their
largest parameter difference (for every batching value), and fedsim's accuracy with other seeds (``--noise-seeds``: the
seed-to-seed spread the engines' difference is compared with). ``--profile`` adds where fedsim's
round goes (the phases of one in-process round, timed from outside with the engine's own calls).

    cd /tmp && python /path/to/benchmarks/vs_flower_whole.py --sizes 10,100 --rounds 3 --batching vmap,loop
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--sizes", type=_cli.counts, default="10,100", help="client counts N (comma-separated)")
    ap.add_argument("--rounds", type=_cli.count, default=3, help="rounds in both engines (the first is warm-up)")
    ap.add_argument("--batching", default="vmap,loop",
                    help="fedsim's model.batching values to time against Flower (comma-separated: vmap, loop, auto)")
    ap.add_argument("--noise-seeds", type=lambda t: _cli.indices(t) if t else [], default="1",
                    help="fedsim's other seeds: accuracy spread ('' none)")
    ap.add_argument("--ray", action="store_true", help="also run fedsim on Ray (2 actors + the server)")
    ap.add_argument("--profile", action="store_true", help="also time the phases of fedsim's round")
    ap.add_argument("--flower-cpus-per-client", type=_cli.positive, default=1.0,
                    help="Flower client_resources.num_cpus")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    if a.rounds < 2:
        ap.error("argument --rounds: at least 2 (the first round is warm-up)")
    if not [m for m in a.batching.split(",") if m] or any(m not in ("vmap", "loop", "auto")
                                                        for m in a.batching.split(",") if m):
        ap.error(f"argument --batching: comma-separated vmap, loop, auto; got {a.batching!r}")
    return a


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_flower import ACC_TOL, SEED, fedsim_scenario, load, simulate, timed_run, write_shards  # noqa: E402

import fedsim  # noqa: E402
from fedsim.partition import make_partition  # noqa: E402
from fedsim.scenario import parse  # noqa: E402

TRAIN = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "batch_size": 32, "local_steps": 5}
MODEL = {"trainable": "all", "init": "scratch"}
TARGET = 5.0  # issue 18: fedsim >= 5x Flower's per-round time at 100 clients on this 2-core machine


def scenario(n: int, rounds: int, backend: str, tmp: Path, seed: int = SEED, batching: str = "auto") -> dict:
    return fedsim_scenario(n, rounds, backend, tmp) | {
        "name": f"vs_flower_whole_n{n}_s{seed}_{batching}", "seed": seed, "training": TRAIN,
        "model": MODEL | {"batching": batching}}


def steady(per_round: list[float]) -> float:
    """Mean seconds per round without the first (warm-up) when there are at least two."""
    rest = per_round[1:] if len(per_round) > 1 else per_round
    return sum(rest) / len(rest)


def run_flower(n: int, rounds: int, tmp: Path, cpus_per_client: float) -> dict:
    import flower_app
    import torch

    from fedsim.models.trainable import split
    from fedsim.stacked import StackedModel, accuracy_and_loss
    from fedsim.whole_plan import prepare_features

    feats, plan = prepare_features(parse(scenario(n, rounds, "local", tmp)))
    part = make_partition("iid", feats.y_train, n, SEED)
    data = tmp / f"flower_whole_n{n}.npz"
    write_shards(feats.x_train, feats.y_train, part.train, data)
    net = split(plan)[1]
    evaluator = StackedModel(net, 1)  # the server's model, evaluated as fedsim's WholeServer.evaluate does
    xt, yt = torch.from_numpy(feats.x_test), torch.from_numpy(feats.y_test)

    def evaluate(arrays: list[np.ndarray]) -> tuple[float, float]:
        evaluator.theta.copy_(torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays]))[None])
        acc, loss = accuracy_and_loss(evaluator, torch.tensor([0]), xt, yt)
        return float(acc[0]), float(loss[0])

    cfg = {"n": n, "rounds": rounds}
    train_config = {"data": str(data), "seed": SEED, "plan": json.dumps(dataclasses.asdict(plan))}
    train_config |= {k: TRAIN[k] for k in ("lr", "batch_size", "local_steps")}
    init = [p.detach().numpy().copy() for p in net.parameters()]
    out: dict = {}
    server = flower_app.make_server_app(cfg, init, evaluate, train_config, out)
    return simulate(server, flower_app.whole_client_app, out, n, rounds, cpus_per_client)


def profile(n: int, tmp: Path, rounds: int = 2, batching: str = "auto") -> dict[str, float]:
    """Seconds per round of each phase of fedsim's in-process round (the engine's own calls,
    timed from outside, both groups one after the other as ``engine.backend: local`` runs them):
    gathering minibatches, the peers' forward + backward (``grad``, as ``batching`` computes it),
    the optimizer step, the server's
    FedAvg; and, for comparison, the same training as a loop of plain ``nn.Module`` copies
    (what each Flower client computes), on the same threads."""
    import copy

    import torch

    from fedsim.models.trainable import split
    from fedsim.prepare import prepare
    from fedsim.stacked import optimizer_step
    from fedsim.whole import WholePeerGroup, WholeServer

    sc = parse(scenario(n, rounds + 1, "local", tmp, batching=batching))
    torch.set_num_threads(min(os.cpu_count() or 1, sc.engine.num_actors))
    prep = prepare(sc)
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    groups = [WholePeerGroup(s, feats) for s in prep.setups]
    server = WholeServer(prep.server_setup)
    template = split(prep.setups[0].model)[1]
    t = {"gather": 0.0, "grad": 0.0, "optimizer": 0.0, "server_fedavg": 0.0, "module_loop": 0.0}
    for r in range(rounds + 1):  # round 0: warm-up, not counted
        tic = dict.fromkeys(t, 0.0)
        msgs = []
        for g in groups:
            g._load(server.get_global())
            for k in range(sc.training.local_steps):
                t0 = time.perf_counter()
                x, y = g._batch(r, k)
                t1 = time.perf_counter()
                _, grad = g.model.loss_and_grad(x, y)
                t2 = time.perf_counter()
                optimizer_step(g.model.theta, grad, g.fopt, **g._opt_kw())
                tic["gather"] += t1 - t0
                tic["grad"] += t2 - t1
                tic["optimizer"] += time.perf_counter() - t2
            msgs.append(g.model.theta.numpy().copy())
        t0 = time.perf_counter()
        server.aggregate(r, *msgs)
        tic["server_fedavg"] = time.perf_counter() - t0
        for g in groups:
            batches = [g._batch(r, k) for k in range(sc.training.local_steps)]  # gathered once, untimed
            t0 = time.perf_counter()
            for j in range(g.p):
                m = copy.deepcopy(template)
                opt = torch.optim.SGD(m.parameters(), lr=sc.training.lr)
                for x, y in batches:
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(m(x[j]), y[j]).backward()
                    opt.step()
            tic["module_loop"] += time.perf_counter() - t0
        if r:
            t = {k: t[k] + tic[k] / rounds for k in t}
    return t


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    sizes = a.sizes
    modes = [m for m in a.batching.split(",") if m]
    noise_seeds = a.noise_seeds
    print(
        f"# fedsim vs Flower {__import__('flwr').__version__} (ray {__import__('ray').__version__}), whole-model "
        f"workload (fmnist_cnn + linear head from scratch, 57,866 parameters), {a.rounds} rounds, "
        f"{os.cpu_count()} CPUs, {load()}; engine: {Path(fedsim.__file__).parent}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs_flower_whole_") as td:
        tmp = Path(td)
        for n in sizes:
            fs: dict[str, dict] = {}
            for m in modes:  # the modes one after the other, then Flower: interleaved under the same load
                l0 = load()
                fs[m] = timed_run(scenario(n, a.rounds, "local", tmp, batching=m), tmp / f"fs_local_n{n}_{m}")
                fs[m]["load"] = (l0, load())
                print(f"# N={n}: fedsim in-process, batching {m} done ({load()})", flush=True)
                if a.ray:
                    fs[m]["ray"] = timed_run(scenario(n, a.rounds, "ray", tmp, batching=m), tmp / f"fs_ray_n{n}_{m}")
            l0 = load()
            fl = run_flower(n, a.rounds, tmp, a.flower_cpus_per_client)
            print(f"# N={n}: Flower done ({load()})", flush=True)
            noise = [timed_run(scenario(n, a.rounds, "local", tmp, s, modes[0]),
                               tmp / f"fs_n{n}_s{s}")["accuracy"][a.rounds] for s in noise_seeds]
            for m in modes:
                f, fr = fs[m], fs[m].get("ray")
                row = {
                    "N": n,
                    "batching": m,
                    "rounds": a.rounds,
                    "fedsim_s_per_round": steady(f["per_round"]),
                    "fedsim_ray_s_per_round": steady(fr["per_round"]) if fr else None,
                    "flower_s_per_round": steady(fl["per_round"]),
                    "fedsim_round_s": f["per_round"],
                    "flower_round_s": fl["per_round"],
                    "fedsim_wall_s": f["wall"],
                    "flower_wall_s": fl["wall"],
                    "acc_fedsim": f["accuracy"][a.rounds],
                    "acc_flower": fl["accuracy"][a.rounds],
                    "acc_fedsim_other_seeds": noise,
                    "max_abs_param_diff": float(np.abs(f["final"] - fl["final"]).max()),
                    "max_abs_param_diff_vs_first_mode": float(np.abs(f["final"] - fs[modes[0]]["final"]).max()),
                    "max_abs_param": float(np.abs(f["final"]).max()),
                    "same_metrics_ray_local": None if fr is None else fr["metrics"] == f["metrics"],
                    "load_fedsim": f["load"],
                    "load_flower": (l0, load()),
                }
                row["ratio"] = row["flower_s_per_round"] / row["fedsim_s_per_round"]
                if fr:
                    row["ratio_ray"] = row["flower_s_per_round"] / row["fedsim_ray_s_per_round"]
                if a.profile:
                    row["profile_s_per_round"] = profile(n, tmp, batching=m)
                    print(f"# N={n}: profile ({m}) done ({load()})", flush=True)
                rows.append(row)
    print("# s/rnd: steady seconds per round (rounds 2..); fs: fedsim in-process; fs-ray: fedsim on Ray; fl: Flower; "
          "acc: global test accuracy after the last round; seed spread: |acc fs(seed 0) - acc fs(other seed)|; "
          f"|dθ|max: fedsim's global model vs Flower's; |dθ {modes[0]}|: vs fedsim's with batching {modes[0]}")
    print(f"{'N':>5} {'batching':>8} {'fs s/rnd':>9} {'fs-ray s/rnd':>12} {'fl s/rnd':>9} {'fl/fs':>6} "
          f"{'fl/fs-ray':>9} "
          f"{'acc fs':>7} {'acc fl':>7} {'|Δacc|':>7} {'seed spread':>11} {'|dθ|max':>8} {'|dθ ' + modes[0] + '|':>9} "
          f"{'|θ|max':>7}")
    for r in rows:
        spread = max((abs(r["acc_fedsim"] - x) for x in r["acc_fedsim_other_seeds"]), default=float("nan"))
        ray_s = f"{r['fedsim_ray_s_per_round']:>12.2f}" if r["fedsim_ray_s_per_round"] else f"{'-':>12}"
        ray_x = f"{r['ratio_ray']:>8.2f}x" if "ratio_ray" in r else f"{'-':>9}"
        print(f"{r['N']:>5} {r['batching']:>8} {r['fedsim_s_per_round']:>9.2f} {ray_s} {r['flower_s_per_round']:>9.2f} "
              f"{r['ratio']:>5.2f}x {ray_x} {r['acc_fedsim']:>7.4f} {r['acc_flower']:>7.4f} "
              f"{abs(r['acc_fedsim'] - r['acc_flower']):>7.4f} {spread:>11.4f} {r['max_abs_param_diff']:>8.1e} "
              f"{r['max_abs_param_diff_vs_first_mode']:>9.1e} {r['max_abs_param']:>7.3f}")
    if a.profile:
        print("# fedsim's in-process round by phase, s/round (both groups serially, "
              f"{min(os.cpu_count() or 1, 2)} torch threads); module loop: the same training as plain nn.Modules")
        keys = list(rows[0]["profile_s_per_round"])
        print(f"{'N':>5} {'batching':>8} " + " ".join(f"{k:>13}" for k in keys))
        for r in rows:
            print(f"{r['N']:>5} {r['batching']:>8} " + " ".join(f"{r['profile_s_per_round'][k]:>13.3f}" for k in keys))
    big = [r for r in rows if r["N"] >= 100]
    met = {m: "n/a" if not big else "met" if all(r["ratio"] >= TARGET for r in big if r["batching"] == m) else "NOT met"
           for m in modes}

    def agree(r: dict) -> bool:  # within ACC_TOL and below fedsim's own seed-to-seed spread (when measured)
        d = abs(r["acc_fedsim"] - r["acc_flower"])
        return d <= ACC_TOL and all(d < abs(r["acc_fedsim"] - x) for x in r["acc_fedsim_other_seeds"])

    same = all(agree(r) for r in rows)
    print(f"# same accuracy (|Δacc| <= {ACC_TOL} and below the seed spread): {'yes' if same else 'NO'}; "
          f"target fedsim >= {TARGET:.0f}x Flower per round at N >= 100: "
          + ", ".join(f"batching {m} {v}" for m, v in met.items()))
    print(f"# {load()}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main(ARGS)
