"""fedsim vs Flower's own simulation engine on the same federated workload.

Workload (identical in both engines): MNIST digits shipped with fedsim (``mnist10k``, 8,000
train / 2,000 test), features of the frozen ``fmnist_cnn`` backbone (576-d) from
``fedsim.features.load_features``, the iid partition of ``fedsim.partition.make_partition``
(seed 0), a linear softmax head (10×576 + 10 parameters), N clients all selected every round,
5 local SGD steps of batch 32 at lr 1.0 (no momentum, so clients are stateless in both
engines), server FedAvg = unweighted mean of the clients' heads. Minibatches are drawn by the
same counter-based RNG, so both engines compute the same model up to float rounding.

* fedsim: ``mode: federated``, ``strategy: fedavg``, ``engine: {backend: ray, num_actors: 2}``,
  and the same scenario in-process (``engine.backend: local``: the 2 groups and the server in the
  driver, 2 torch threads), which must give a byte-identical ``metrics.jsonl``.
* Flower (``pip install -e ".[bench]"``: ``flwr[simulation]==1.41.0``, the project's pin; 1.42.0
  has the same simulation API but requires a certifi release the package index lacks):
  ``flwr.simulation.run_simulation`` with the Ray backend (2 CPUs, 1 CPU per client → 2
  concurrent ClientApp actors, Flower's fastest setting here; 0.5 CPU per client is slower), the
  Message API (``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` with equal client
  weights, ``ClientApp`` with a ``@train`` function; see ``benchmarks/flower_app.py``).

Throughput = rounds per second in steady state: the time of each round (fedsim:
``timings.jsonl``; Flower: the time between the strategy's per-round ``evaluate_fn`` calls, minus
the evaluation itself), without the first round in both engines (warm-up: actors import their
code, Flower's ClientApps load their data). Wall = the whole call, including starting Ray,
loading data and the first round. Flower may run fewer rounds than fedsim
at large N (``--flower-rounds``); the accuracy check compares both engines after the same number
of rounds (fedsim evaluates every round; the exact fedsim head after Flower's rounds comes from
an extra untimed fedsim run with ``engine.backend: local``, which gives identical numbers).
Both engines' accuracies must agree within ``ACC_TOL`` (the script exits 1 otherwise).

    python benchmarks/vs_flower.py                       # N = 10, 100, 1000
    python benchmarks/vs_flower.py --sizes 100 --busy-core   # with one core kept busy by another process

``--busy-core`` starts a process that spins on one core for the whole benchmark (the normal state
of a laptop or a shared server) and stops it at the end. Every row also gives fedsim's cost per
client-round divided by the arithmetic floor of the same work (``benchmarks/floor.py``: the same
GEMMs as one tight batched loop, the fastest of its variants, measured in this run with the same load).
    python benchmarks/vs_flower.py --sizes 10,100 --rounds 30 --flower-rounds 30,10
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--sizes", type=_cli.counts, default="10,100,1000", help="client counts N (comma-separated)")
    ap.add_argument("--rounds", type=_cli.count, default=50, help="fedsim rounds (every N)")
    ap.add_argument(
        "--flower-rounds", type=_cli.counts, default="20,10,6",
        help="Flower rounds: one per size, or one for all (Flower is slow)"
    )
    ap.add_argument("--flower-cpus-per-client", type=_cli.positive, default=1.0,
                    help="Flower client_resources.num_cpus")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--busy-core", action="store_true", help="keep one core busy with a spinning process throughout")
    ap.add_argument("--local-parallel", default=None, choices=["auto", "off"],
                    help="engine.local_parallel of the in-process run (default: the scenario's, off)")
    a = ap.parse_args(argv)
    if len(a.flower_rounds) not in (1, len(a.sizes)):
        ap.error("--flower-rounds: give one value or one per size")
    if max(a.flower_rounds) > a.rounds:
        ap.error("--flower-rounds must not exceed --rounds (accuracy is compared at Flower's rounds)")
    return a


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (floor.py imports it): as fedsim sets it
os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")  # Flower's own knob: no per-round INFO lines
sys.path.insert(0, str(Path(__file__).resolve().parent))

from floor import client_batch, floor_seconds, flop_per_client_round  # noqa: E402

import fedsim  # noqa: E402
from fedsim.features import load_features  # noqa: E402
from fedsim.partition import make_partition  # noqa: E402
from fedsim.rundir import read_checkpoint  # noqa: E402
from fedsim.runner import Run  # noqa: E402
from fedsim.scenario import parse  # noqa: E402

DATASET, BACKBONE, SEED = "mnist10k", "fmnist_cnn", 0
TRAIN = {"optimizer": "sgd", "lr": 1.0, "momentum": 0.0, "batch_size": 32, "local_steps": 5}
TRAIN_SAMPLES = 8000  # mnist10k's training split, shared iid among the N clients
ACC_TOL = 0.005  # absolute; see docs/performance.md ("same computation")


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def fedsim_scenario(n: int, rounds: int, backend: str, out: Path, ckpt: int = 0,
                    local_parallel: str | None = None) -> dict:
    """The fedsim side of the workload; ``local_parallel`` (``engine.local_parallel``): None leaves
    the scenario's default."""
    engine = {"backend": backend, "num_actors": 2}
    if local_parallel is not None:
        engine["local_parallel"] = local_parallel
    return {
        "name": f"vs_flower_n{n}",
        "seed": SEED,
        "mode": "federated",
        "rounds": rounds,
        "dataset": {"name": DATASET},
        "backbone": {"name": BACKBONE},
        "partition": {"kind": "iid"},
        "peers": {"count": n},
        "strategy": {"name": "fedavg"},
        "training": TRAIN,
        "evaluation": {"every": 1},
        "engine": engine,
        "checkpoint": {"every": ckpt},
        "output": {"dir": str(out)},
    }


def run_fedsim(n: int, rounds: int, tmp: Path, backend: str, local_parallel: str | None = None) -> dict:
    """``backend="ray"``: Run starts Ray with a CPU for each of the 2 peer-group actors and the
    server, then stops it. ``"local"``: the same 2 groups and server in this process, by default
    one after another, each with 2 torch threads (``local_parallel="auto"``: side by side, one
    thread each, the server alone on both)."""
    sc = fedsim_scenario(n, rounds, backend, tmp, local_parallel=local_parallel if backend == "local" else None)
    return timed_run(sc, tmp / f"fedsim_{backend}_n{n}")


def timed_run(scenario: dict, run_dir: Path) -> dict:
    """Run a fedsim scenario; its wall time, per-round times (``timings.jsonl``, evaluation
    excluded), the global accuracy after each evaluated round (1-based), ``metrics.jsonl`` and the
    final global model (flat)."""
    r = Run(parse(scenario), run_dir)
    t0 = time.perf_counter()
    r.create_dir(overwrite=True)
    r.execute()
    wall = time.perf_counter() - t0
    per_round = [json.loads(x)["seconds"] for x in (r.dir / "timings.jsonl").read_text().splitlines()]
    acc = {
        rec["round"] + 1: rec["accuracy_mean"]
        for rec in map(json.loads, (r.dir / "metrics.jsonl").read_text().splitlines())
        if "accuracy_mean" in rec
    }
    metrics = (r.dir / "metrics.jsonl").read_bytes()
    final = np.asarray(r.final_params[0]).copy()  # federated: every row is the server's global model
    return {"rounds": scenario["rounds"], "wall": wall, "per_round": per_round, "accuracy": acc, "metrics": metrics,
            "final": final}


def fedsim_global(n: int, rounds: int, tmp: Path) -> np.ndarray:
    """The exact global head after ``rounds`` (untimed, in-process backend)."""
    sc = parse(fedsim_scenario(n, rounds, "local", tmp, ckpt=rounds))
    r = Run(sc, tmp / f"fedsim_local_n{n}")
    r.create_dir(overwrite=True)
    r.execute()
    return np.asarray(read_checkpoint(r.dir / "checkpoint.pt")[1]["server"]["global"])


def run_flower(n: int, rounds: int, tmp: Path, cpus_per_client: float) -> dict:
    import flower_app

    feats = load_features(DATASET, BACKBONE)
    part = make_partition("iid", feats.y_train, n, SEED)
    data = tmp / f"flower_data_n{n}.npz"
    write_shards(feats.x_train, feats.y_train, part.train, data)
    cfg = {"n": n, "rounds": rounds, "data": str(data), "seed": SEED, "classes": feats.num_classes, "dim": feats.dim}
    cfg |= {k: TRAIN[k] for k in ("lr", "batch_size", "local_steps")}
    out: dict = {}
    return simulate(flower_app.head_server_app(cfg, feats.x_test, feats.y_test, out), flower_app.client_app, out,
                    n, rounds, cpus_per_client)


def write_shards(x: np.ndarray, y: np.ndarray, train: list[np.ndarray], path: Path) -> None:
    """The clients' shards back to back (``offsets``), as ``flower_app._local`` reads them."""
    idx = np.concatenate(train)
    np.savez(path, x=x[idx], y=y[idx], offsets=np.concatenate([[0], np.cumsum([len(t) for t in train])]))


def simulate(server, client_app, out: dict, n: int, rounds: int, cpus_per_client: float) -> dict:
    """Flower's ``run_simulation`` (Ray backend, every CPU, ``cpus_per_client`` per ClientApp);
    per-round times from the server's evaluation stamps, the evaluation itself excluded."""
    from flwr.simulation import run_simulation

    t0 = time.perf_counter()
    run_simulation(
        server_app=server,
        client_app=client_app,
        num_supernodes=n,
        backend_name="ray",
        backend_config={
            "init_args": {"num_cpus": os.cpu_count() or 2, "logging_level": "ERROR", "log_to_driver": False},
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        },
    )
    wall = time.perf_counter() - t0
    st, ev = out["stamps"], out["eval_seconds"]
    per_round = [st[k] - st[k - 1] - ev[k - 1] for k in range(1, len(st))]
    return {"rounds": rounds, "wall": wall, "per_round": per_round, "accuracy": out["accuracy"], "final": out["final"]}


def steady_throughput(per_round: list[float]) -> float:
    """Rounds per second without the first round (warm-up: actors import their code and load
    data) when there are at least two."""
    rounds = per_round[1:] if len(per_round) > 1 else per_round
    return len(rounds) / sum(rounds)


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    if a.busy_core:
        import atexit
        import subprocess

        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        atexit.register(spinner.kill)
        time.sleep(1.0)
    sizes, fr = a.sizes, a.flower_rounds
    fr = fr * len(sizes) if len(fr) == 1 else fr
    print(
        f"# fedsim vs Flower {__import__('flwr').__version__} (ray {__import__('ray').__version__}), "
        f"{os.cpu_count()} CPUs, {load()}{', one core kept busy' if a.busy_core else ''}; "
        f"engine: {Path(fedsim.__file__).parent}",
        flush=True,
    )
    rows = []
    # the in-process layout as the run resolves it (the scenario's default where not given)
    layout = parse(fedsim_scenario(10, 1, "local", Path("."), local_parallel=a.local_parallel)).engine.local_parallel
    with tempfile.TemporaryDirectory(prefix="vs_flower_") as td:
        tmp = Path(td)
        for n, rf in zip(sizes, fr, strict=True):
            l0 = load()
            fs = run_fedsim(n, a.rounds, tmp, "ray")
            fs_local = run_fedsim(n, a.rounds, tmp, "local", a.local_parallel)
            fl = run_flower(n, rf, tmp, a.flower_cpus_per_client)
            g = fedsim_global(n, rf, tmp)
            row = {
                "N": n,
                "fedsim_rounds": a.rounds,
                "fedsim_wall_s": fs["wall"],
                "fedsim_rounds_per_s": steady_throughput(fs["per_round"]),
                "fedsim_local_wall_s": fs_local["wall"],
                "fedsim_local_rounds_per_s": steady_throughput(fs_local["per_round"]),
                "same_metrics_both_engines": fs["metrics"] == fs_local["metrics"],
                "flower_rounds": rf,
                "flower_wall_s": fl["wall"],
                "flower_rounds_per_s": steady_throughput(fl["per_round"]),
                "fedsim_first_round_s": fs["per_round"][0],
                "flower_first_round_s": fl["per_round"][0],
                "fedsim_round_s": fs["per_round"],
                "flower_round_s": fl["per_round"],
                "acc_fedsim": fs["accuracy"][rf],
                "acc_flower": fl["accuracy"][rf],
                "acc_fedsim_final": fs["accuracy"][a.rounds],
                "max_abs_param_diff": float(np.abs(g - fl["final"]).max()),
                "max_abs_param": float(np.abs(g).max()),
                "load_before": l0,
                "load_after": load(),
            }
            # the same arithmetic, its fastest variant at 1 or 2 threads (floor.py), with the rows a
            # client really trains on (min(batch, its training shard): 7 at N = 1,000)
            row["floor_s_per_client_round"], row["floor_variant"] = floor_seconds(
                n, client_batch(n, TRAIN["batch_size"], TRAIN_SAMPLES)
            )
            row["floor_ratio"] = 1 / (row["fedsim_rounds_per_s"] * n) / row["floor_s_per_client_round"]
            row["floor_ratio_local"] = 1 / (row["fedsim_local_rounds_per_s"] * n) / row["floor_s_per_client_round"]
            row["busy_core"] = a.busy_core
            row["local_parallel"] = layout
            row["ratio"] = row["fedsim_rounds_per_s"] / row["flower_rounds_per_s"]
            row["ratio_local"] = row["fedsim_local_rounds_per_s"] / row["flower_rounds_per_s"]
            rows.append(row)
            print(f"# N={n} done ({row['load_before']} -> {row['load_after']})", flush=True)
    print("# fs: fedsim on Ray (2 actors + server); fs-ip: fedsim in-process (engine.backend: local, "
          f"local_parallel: {layout}); fl: Flower")
    hdr = (
        f"{'N':>5} {'fs rnds':>7} {'fs wall s':>9} {'fs rnd/s':>9} {'fs-ip wall s':>12} {'fs-ip rnd/s':>11} "
        f"{'fl rnds':>7} {'fl wall s':>9} {'fl rnd/s':>9} {'fs/fl':>6} {'fs-ip/fl':>8} "
        f"{'acc fs@fl':>9} {'acc fl':>7} {'|dθ|max':>8} {'acc fs end':>10} {'fs/floor':>8} {'fs-ip/floor':>11}"
    )
    print(hdr)
    for r in rows:
        print(
            f"{r['N']:>5} {r['fedsim_rounds']:>7} {r['fedsim_wall_s']:>9.1f} {r['fedsim_rounds_per_s']:>9.2f} "
            f"{r['fedsim_local_wall_s']:>12.1f} {r['fedsim_local_rounds_per_s']:>11.2f} "
            f"{r['flower_rounds']:>7} {r['flower_wall_s']:>9.1f} {r['flower_rounds_per_s']:>9.3f} "
            f"{r['ratio']:>5.0f}x {r['ratio_local']:>7.0f}x {r['acc_fedsim']:>9.4f} {r['acc_flower']:>7.4f} "
            f"{r['max_abs_param_diff']:>8.1e} {r['acc_fedsim_final']:>10.4f} "
            f"{r['floor_ratio']:>7.1f}x {r['floor_ratio_local']:>10.1f}x"
        )
    ok = all(abs(r["acc_fedsim"] - r["acc_flower"]) <= ACC_TOL for r in rows)
    same = all(r["same_metrics_both_engines"] for r in rows)
    big = [r for r in rows if r["N"] >= 100]

    goal = 50 if a.busy_core else 100  # issue 19: >= 100x quiet, >= 50x with one core busy

    def target(key: str) -> str:
        return "n/a" if not big else "met" if all(r[key] >= goal for r in big) else "NOT met"

    def floor_goal(key: str) -> str:
        return "n/a" if not big else "met" if all(r[key] <= 2 for r in big) else "NOT met"

    print(
        f"# same accuracy after the same rounds (|Δacc| <= {ACC_TOL}): {'yes' if ok else 'NO'}; "
        f"fedsim's two engines byte-identical metrics.jsonl: {'yes' if same else 'NO'}; "
        f"target fedsim >= {goal}x Flower at N>=100: on Ray {target('ratio')}, in-process {target('ratio_local')}; "
        f"within 2x of the floor: on Ray {floor_goal('floor_ratio')}, in-process {floor_goal('floor_ratio_local')}"
    )
    for r in rows:
        b = client_batch(r["N"], TRAIN["batch_size"], TRAIN_SAMPLES)
        flop = flop_per_client_round(batch=b, steps=TRAIN["local_steps"])
        print(f"# N={r['N']}: floor {r['floor_s_per_client_round'] * 1e6:.1f} µs/client-round ({r['floor_variant']}), "
              f"batch {b}, {flop / 1e6:.3f} MFLOP/client-round")
    print(f"# {load()}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    if not (ok and same):
        sys.exit(1)


if __name__ == "__main__":
    main(ARGS)
