"""How fedsim's decentralized engine scales with the number of peers.

Workload: decentralized Bristle (``strategy.name: bristle``; falls back to ``fedavg`` with a
notice if that rule is not registered) on Fashion-MNIST shipped with fedsim
(``fashion_mnist_embedded``: 60,000 train / 10,000 test), frozen ``fmnist_cnn`` features, iid
partition (10,000 peers hold ~6 samples each: 5 train + 1 local validation), push gossip with
fanout 5 (a fresh random directed graph every round), SGD lr 1.0 momentum 0.9, batch 32, 5 local
steps, evaluation of 100 sampled honest peers every 10 rounds, ``engine: {backend: ray,
num_actors: 2}``.

Per size, two measurements in this one process:

1. **End to end** (the real engine): ``fedsim.runner.Run(..., fetch_final_params=False).execute()``
   on Ray, as ``fedsim run`` runs it (no final heads fetched into the driver: nothing reads them;
   accuracy is the summary's). Wall time of the
   whole call (Ray start, features, actors, all rounds), the round loop (sum of the rounds'
   ``RoundRecord.seconds``, training + aggregation; each phase's total from the same records)
   and the peak memory of the driver and every process
   it started (Ray actors/workers and Ray's own daemons), sampled every 0.2 s from /proc (``pss.py``): the sum
   of RSS over driver + workers (what the brief asks: shared pages are counted once per process
   that maps them, so this over-counts Ray's shared-memory object store) and the sum of PSS over
   all of them including daemons (proportional set size: shared pages split among their users,
   the honest total).
2. **Breakdown**: the engine's own :class:`fedsim.simulation.Simulation` on the in-process
   backend (``engine.backend: local``; each group limited to one torch thread, as in a 1-CPU Ray
   actor) for ``--breakdown-rounds`` rounds, evaluating every round; the phases are the rounds'
   ``RoundRecord.phases``: *train* = every group's ``PeerGroup.train``; *aggregate* = every
   group's ``PeerGroup.aggregate`` (routing: concatenating every group's messages, the round's
   gossip graph, forging, selecting each peer's in-neighbours; and the rule); *evaluation* =
   ``PeerGroup.evaluate`` on the sampled peers, amortised over ``evaluation.every``. The
   in-process numbers are the groups run one after the other; the Ray run runs the two groups
   in parallel, plus object-store transfer. (Versions before the round records split
   *aggregate* into routing and the rule by wrapping the rule's functions; the records do not.)

    python benchmarks/scale.py                                  # 100, 1,000, 10,000 peers × 100 rounds
    python benchmarks/scale.py --sizes 100,1000 --rounds 20 --breakdown-rounds 3
    python benchmarks/scale.py --sizes 100000 --replicate 4 --skip-breakdown   # 100,000 peers

``--replicate K`` (sizes beyond the 60,000 samples): the training set is K copies of the
``fmnist_cnn`` features of ``fashion_mnist_embedded`` (computed once, written to a temporary
``.npz`` read as ``dataset: npz`` with the ``identity`` backbone): the same arithmetic per step,
but repeated samples, so its accuracy is not comparable. ``--message-dtype`` sets
``engine.message_dtype``, ``--head-dtype`` ``engine.head_dtype``, ``--local-parallel``
``engine.local_parallel`` (in-process groups side by side). ``--progress`` prints each round's time
and the memory of every process (PSS by kind) as the end-to-end run goes. ``--device cuda`` sets
``engine.device`` (needs ``--backend local``; ``fedsim/device.py``: the groups' heads, shards, local
steps and evaluation on the GPU, the aggregation on the CPU) and adds the GPU's peak allocated
memory; the table's ``peer-rnd/s`` is peers × rounds per second of the round loop (issue 19's
figure):

    python benchmarks/scale.py --sizes 10000,100000 --rounds 5 --replicate 4 --backend local \
        --device cuda --skip-breakdown          # benchmarks/gpu_check.sh runs it, CPU baseline beside it
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--sizes", type=_cli.counts, default="100,1000,10000")
    ap.add_argument("--rounds", type=_cli.count, default=100)
    ap.add_argument("--breakdown-rounds", type=_cli.count, default=5, help="rounds of the in-process breakdown")
    ap.add_argument("--strategy", default="bristle")
    ap.add_argument("--partition", default="iid", choices=["iid", "dirichlet"])
    ap.add_argument("--alpha", type=_cli.positive, default=0.5, help="Dirichlet alpha (--partition dirichlet)")
    ap.add_argument("--fanout", type=_cli.count, default=5)
    ap.add_argument("--eval-every", type=_cli.count, default=10)
    ap.add_argument("--eval-peers", type=_cli.count, default=100)
    ap.add_argument("--num-actors", type=_cli.count, default=2)
    ap.add_argument("--cpus-per-actor", type=_cli.positive, default=1.0,
                    help="engine.cpus_per_actor (in-process: num_actors x this many torch threads)")
    ap.add_argument(
        "--backend", default="ray", choices=["ray", "local"], help="engine.backend of the end-to-end runs"
    )
    ap.add_argument("--skip-end-to-end", action="store_true")
    ap.add_argument("--replicate", type=_cli.index, default=0,
                    help="train on K copies of the features (sizes > 60,000)")
    ap.add_argument("--message-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--head-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="engine.head_dtype: precision of the stored heads and optimizer state")
    ap.add_argument("--device", default="cpu", help="engine.device: cpu, cuda or cuda:N (with --backend local)")
    ap.add_argument("--aggregate-chunk", type=_cli.count, default=None,
                    help="engine.aggregate_chunk: receivers per batched rule call (default: the scenario's, 64)")
    ap.add_argument("--local-parallel", default=None, choices=["auto", "off"],
                    help="engine.local_parallel (with --backend local; default: the scenario's, off)")
    ap.add_argument("--progress", action="store_true", help="print every round of the end-to-end runs")
    ap.add_argument("--skip-breakdown", action="store_true")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--set", action="append", default=[], type=_cli.key_value, metavar="KEY=VALUE", dest="sets",
                    help="scenario override, as fedsim run --set (e.g. strategy.params.precision=float32, seed=1)")
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import pss  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

import fedsim  # noqa: E402
import strategies  # noqa: E402
from fedsim.backend import LocalBackend  # noqa: E402
from fedsim.callbacks import Callback  # noqa: E402
from fedsim.errors import ScenarioError  # noqa: E402
from fedsim.overrides import parse_set, set_dotted  # noqa: E402
from fedsim.prepare import prepare  # noqa: E402
from fedsim.runner import Run  # noqa: E402
from fedsim.scenario import parse  # noqa: E402
from fedsim.simulation import PHASES, RoundRecord, Simulation  # noqa: E402


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def replicated(k: int, td: Path) -> Path:
    """An ``.npz`` of ``k`` copies of the fmnist_cnn features of fashion_mnist_embedded (test set once)."""
    from fedsim.features import load_features

    f = load_features("fashion_mnist_embedded", "fmnist_cnn")
    path = td / f"fmnist_cnn_x{k}.npz"
    np.savez(path, x_train=np.tile(f.x_train, (k, 1)), y_train=np.tile(f.y_train, k), x_test=f.x_test, y_test=f.y_test)
    return path


def scenario(n: int, rounds: int, a: argparse.Namespace, strategy: str, out: Path) -> dict:
    data = (
        {"dataset": {"name": "fashion_mnist_embedded"}, "backbone": {"name": "fmnist_cnn"}}
        if a.replicate_path is None
        else {"dataset": {"name": "npz", "data_dir": str(a.replicate_path)},
              "backbone": {"name": "identity", "cache_dir": str(out / "cache")}}
    )
    d = {
        "name": f"scale_{n}",
        "seed": 0,
        "mode": "decentralized",
        "rounds": rounds,
        **data,
        "partition": {"kind": a.partition, **({"alpha": a.alpha, "min_size": 2} if a.partition == "dirichlet" else {})},
        "peers": {"count": n},
        "topology": {"kind": "push_gossip", "fanout": a.fanout},
        "strategy": {"name": strategy},
        "training": {"optimizer": "sgd", "lr": 1.0, "momentum": 0.9, "batch_size": 32, "local_steps": 5},
        "evaluation": {"every": a.eval_every, "peers": a.eval_peers},
        "engine": {"backend": a.backend, "num_actors": a.num_actors, "cpus_per_actor": a.cpus_per_actor,
                   "message_dtype": a.message_dtype, "head_dtype": getattr(a, "head_dtype", "float32"),
                   "device": a.device,
                   **({} if a.aggregate_chunk is None else {"aggregate_chunk": a.aggregate_chunk}),
                   **({} if getattr(a, "local_parallel", None) is None else {"local_parallel": a.local_parallel})},
        "checkpoint": {"every": 0},
        "output": {"dir": str(out)},
    }
    for item in getattr(a, "sets", []):  # --set KEY=VALUE: fedsim run's own parser and setter
        set_dotted(d, *parse_set(item))
    return d


# ---------------------------------------------------------------------------------- memory
def release_memory() -> None:
    """Return freed heap to the OS (glibc), so the driver's RSS reflects what it holds now."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemorySampler:
    """Peak memory of this process and all its descendants (Ray daemons, actors, workers), read by
    :func:`pss.sample`; ``peak.by_kind()``: PSS per kind at the moment of the total PSS peak."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_rss_workers = 0  # driver + ray:: worker processes, RSS summed
        self.peak_pss_workers = 0
        self.peak = pss.Peak()  # every process, PSS summed: total, the sample at its peak, kinds
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @property
    def peak_pss_all(self) -> int:
        return self.peak.total

    def sample(self) -> None:
        procs = pss.sample(os.getpid())
        self.peak.add(procs)
        self.peak_rss_workers = max(self.peak_rss_workers, sum(p.rss for p in procs if p.worker))
        self.peak_pss_workers = max(self.peak_pss_workers, sum(p.pss for p in procs if p.worker))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


class RoundPrinter(Callback):
    """Prints each round's phases and the memory sampler's current peaks (``--progress``)."""

    def __init__(self, mem: MemorySampler) -> None:
        self.mem, self.t0 = mem, time.perf_counter()

    def on_round(self, record: RoundRecord) -> None:
        kinds = " ".join(f"{k} {v / 2**30:.2f}" for k, v in sorted(self.mem.peak.by_kind().items()))
        print(
            f"# round {record.round}: " + " ".join(f"{k} {v:.2f}s" for k, v in record.phases.items())
            + f"; {time.perf_counter() - self.t0:.0f} s since start; "
            f"peak PSS all {self.mem.peak_pss_all / 2**30:.2f} GiB (by kind at that peak, GiB: {kinds}); {load()}",
            flush=True,
        )


def end_to_end(sc_dict: dict, run_dir: Path, progress: bool = False) -> dict:
    sc = parse(sc_dict)
    r = Run(sc, run_dir, fetch_final_params=False)  # what `fedsim run` costs: it keeps no final heads
    r.create_dir(overwrite=True)
    cuda = sc.engine.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats(sc.engine.device)
    t0 = time.perf_counter()
    with MemorySampler() as mem:
        summary = r.execute(callbacks=[RoundPrinter(mem)] if progress else ())
    wall = time.perf_counter() - t0
    per_round = [x.seconds for x in r.records]
    last = next((x.metrics for x in reversed(r.records) if "accuracy_mean" in x.metrics), {})
    return {
        "wall_s": wall,
        "loop_s": float(sum(per_round)),
        "round_ms_median": 1e3 * float(np.median(per_round)),
        "phase_s": {k: round(sum(x.phases[k] for x in r.records), 3) for k in PHASES},
        "peak_rss_driver_workers_gb": mem.peak_rss_workers / 2**30,  # (the *_gb keys are GiB)
        "peak_pss_all_gb": mem.peak_pss_all / 2**30,
        "peak_pss_driver_workers_gb": mem.peak_pss_workers / 2**30,
        "pss_by_kind_at_peak_gb": {k: round(v / 2**30, 3) for k, v in mem.peak.by_kind().items()},  # sums to the peak
        "accuracy_mean": summary.get("final_accuracy_mean"),
        "accuracy_std": last.get("accuracy_std"),  # over the evaluated peers: a 95% CI is 1.96 std / sqrt(n)
        "evaluated_peers": last.get("evaluated_peers"),
        "device": sc.engine.device,
        "peak_gpu_allocated_gb": torch.cuda.max_memory_allocated(sc.engine.device) / 2**30 if cuda else None,
    }


# ---------------------------------------------------------------------------------- breakdown
def breakdown(sc_dict: dict, rounds: int) -> dict:
    """Per-round phase times (ms) of the engine's Simulation in-process, from its RoundRecords."""
    every = sc_dict["evaluation"]["every"]
    sc = parse(sc_dict | {"engine": {**sc_dict["engine"], "backend": "local"},
                          "evaluation": {**sc_dict["evaluation"], "every": 1}})  # the records time every evaluation
    prep = prepare(sc)
    prep.setups = [replace(s, threads=1) for s in prep.setups]  # one torch thread per group, as a 1-CPU actor
    threads = torch.get_num_threads()
    try:
        sim = Simulation(sc, prep, LocalBackend())
        records = [sim.step(r) for r in range(rounds)]
    finally:
        torch.set_num_threads(threads)
    ms = {k: 1e3 * sum(x.phases[k] for x in records) / rounds for k in PHASES}
    ms["evaluate"] /= every  # amortised per round
    ms["total"] = sum(ms.values())
    return ms


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    strategy = a.strategy
    if strategy not in strategies.REGISTRY:
        print(f"# strategy {strategy!r} is not registered; falling back to 'fedavg'")
        strategy = "fedavg"
    sizes = a.sizes
    try:  # a bad --set (or a value the scenario refuses) is one line, before any work (checked on 100
        # peers of the shipped features: the sizes against the training set are the runs' to check)
        parse(scenario(100, a.rounds, argparse.Namespace(**vars(a) | {"replicate_path": None}), strategy,
                       Path(tempfile.gettempdir())))
    except (ScenarioError, ValueError) as e:
        raise SystemExit(f"scale.py: --set: {e}") from None
    print(
        f"# fedsim scale: decentralized {strategy}, fashion_mnist_embedded/fmnist_cnn, {a.partition}, "
        f"push_gossip fanout {a.fanout}, {a.rounds} rounds, eval {a.eval_peers} peers every {a.eval_every}, "
        f"engine.backend {a.backend}, {a.num_actors} groups x {a.cpus_per_actor:g} CPUs, messages {a.message_dtype}, "
        f"heads {a.head_dtype}, engine.device {a.device}"
        + (f", engine.local_parallel {a.local_parallel}" if a.local_parallel else "") + (
            f" ({torch.cuda.get_device_name(a.device)})" if a.device != "cpu" and torch.cuda.is_available() else "")
        + (f", training set = {a.replicate} copies of the features" if a.replicate else "")
        + (f", --set {' '.join(a.sets)}" if a.sets else "") + "; "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.1f} GiB; {load()}; "
        f"engine: {Path(fedsim.__file__).parent}",
        flush=True,
    )
    rows = [{"peers": n} for n in sizes]
    with tempfile.TemporaryDirectory(prefix="fedsim_scale_") as td:
        a.replicate_path = replicated(a.replicate, Path(td)) if a.replicate else None
        # all end-to-end runs first, then the in-process breakdowns: the driver's memory (part of
        # the peak) then never holds a previous breakdown's heap
        for row in rows if not a.skip_end_to_end else []:
            n = row["peers"]
            release_memory()
            row["load_before"] = load()
            row |= end_to_end(scenario(n, a.rounds, a, strategy, Path(td)), Path(td) / f"scale_{n}", a.progress)
            row["load_after"] = load()
            print(f"# end to end, {n} peers done ({row['load_before']} -> {row['load_after']})", flush=True)
        for row in rows if not a.skip_breakdown else []:
            n = row["peers"]
            row["breakdown_load_before"] = load()
            row["breakdown_ms"] = breakdown(scenario(n, a.rounds, a, strategy, Path(td)), a.breakdown_rounds)
            row["breakdown_load_after"] = load()
            print(f"# breakdown, {n} peers done ({row['breakdown_load_before']} -> {row['breakdown_load_after']})")
    if not a.skip_end_to_end:
        print(
            f"{'peers':>6} {'rounds':>6} {'wall s':>7} {'loop s':>7} {'ms/round':>8} {'µs/peer/rnd':>11} "
            f"{'peer-rnd/s':>10} {'RSSGiB':>6} {'PSSGiB':>6} {'GPUGiB':>6} {'acc':>6} device"
        )
        for r in rows:
            gpu = r["peak_gpu_allocated_gb"]
            print(
                f"{r['peers']:>6} {a.rounds:>6} {r['wall_s']:>7.1f} {r['loop_s']:>7.1f} "
                f"{1e3 * r['loop_s'] / a.rounds:>8.1f} {1e6 * r['loop_s'] / a.rounds / r['peers']:>11.1f} "
                f"{r['peers'] * a.rounds / r['loop_s']:>10.0f} "
                f"{r['peak_rss_driver_workers_gb']:>6.2f} {r['peak_pss_all_gb']:>6.2f} "
                f"{'-' if gpu is None else f'{gpu:.2f}':>6} {r['accuracy_mean'] or 0:>6.3f} {r['device']}"
            )
        for r in rows:
            kinds = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["pss_by_kind_at_peak_gb"].items()))
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phase_s"].items())
            ci = 1.96 * (r["accuracy_std"] or 0) / max(1, r["evaluated_peers"] or 1) ** 0.5
            print(f"# {r['peers']} peers: PSS by process kind at the total peak (GiB): {kinds}; "
                  f"phase totals (s): {phases}; accuracy {r['accuracy_mean'] or 0:.3f} ± {ci:.3f} "
                  f"(95% CI over {r['evaluated_peers']} peers)")
    if not a.skip_breakdown:
        print(
            f"# per-round breakdown from the RoundRecords, in-process, 1 thread per group, groups serially "
            f"({a.breakdown_rounds} rounds; evaluation amortised over evaluation.every)"
        )
        print(
            f"{'peers':>6} {'train ms':>9} {'aggregate ms':>12} {'eval ms':>8} {'total ms':>9} {'µs/peer':>8}"
        )
        for r in rows:
            b = r["breakdown_ms"]
            print(
                f"{r['peers']:>6} {b['train']:>9.1f} {b['aggregate']:>12.1f} "
                f"{b['evaluate']:>8.1f} {b['total']:>9.1f} {1e3 * b['total'] / r['peers']:>8.1f}"
            )
    print(f"# {load()}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
