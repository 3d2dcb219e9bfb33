"""Where an in-process round of the vs-Flower workload goes, against the arithmetic floor.

Drives fedsim's own :class:`fedsim.simulation.Simulation` in-process (``engine.backend: local``,
2 groups) on ``benchmarks/vs_flower.py``'s scenario, the groups one after another on one torch
thread (``engine.local_parallel: off``, ``cpus_per_actor: 0.5``): each group does the work it does
in the default layout (side by side, one thread each), and the timers add it up without two threads'
calls overlapping (in the default layout the train phase's wall time is about half of it, and the
server's aggregation runs on all the run's threads, here on one), and
times, per round (round 0, the warm-up, left out; the median over the other rounds), the
simulation's phases (``train`` and ``aggregate``, whose sum is ``timings.jsonl``'s ``seconds``, the
figure vs_flower.py's rounds/s come from; ``evaluate`` apart) and inside them, by wrapping the
engine's functions with timers: the global head copied in (``set_params``), the minibatch indices
(``draw``, :mod:`fedsim.rng`) and gathering (``gather``: the whole group's or a chunk's rows; the
padded path's weights only where it copies rows), the two GEMMs and softmax of each local
step (``ce_grad``), the SGD update (``sgd``), the sent heads (``message``), and in the server the
forging check (``forge``) and the rule (``rule``); ``other`` is what no timer covers (Python, the
loss sum, the concatenation). ``metrics`` is :func:`fedsim.simulation.round_metrics`. The floor
(``benchmarks/floor.py``) is measured in the same process right after, and every figure is also
given per client-round as a multiple of it. ``--profile`` adds cProfile's top functions.

    python benchmarks/round_split.py --sizes 100,1000 --rounds 30
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--sizes", type=_cli.counts, default="100,1000", help="client counts N (comma-separated)")
    ap.add_argument("--rounds", type=_cli.count, default=30, help="rounds per size (the first is left out)")
    ap.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    a = ap.parse_args(argv)
    if a.rounds < 2:
        ap.error(f"argument --rounds: at least 2 (the first round is left out), got {a.rounds}")
    return a


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: as fedsim sets it
sys.path.insert(0, str(Path(__file__).resolve().parent))

import floor  # noqa: E402
from vs_flower import TRAIN, TRAIN_SAMPLES, fedsim_scenario  # noqa: E402

from fedsim import heads, peers, server, simulation  # noqa: E402
from fedsim.backend import LocalBackend  # noqa: E402
from fedsim.prepare import prepare  # noqa: E402
from fedsim.scenario import parse  # noqa: E402
from fedsim.simulation import Simulation  # noqa: E402

# (owner, attribute, label): the engine's functions timed (each call's wall time added to its label)
TIMED: tuple[tuple[Any, str, str], ...] = (
    (peers.PeerGroup, "set_params", "set_params"),
    (peers.PeerGroup, "_draw", "draw"),
    (peers.PeerGroup, "_rows_batch", "gather"),
    (heads, "ce_grad", "ce_grad"),
    (heads, "step", "sgd"),
    (peers.PeerGroup, "_message", "message"),
    (server, "forge_messages", "forge"),
    (server.strategies, "aggregate", "rule"),
    (simulation, "round_metrics", "metrics"),
)


@contextmanager
def timers(acc: dict[str, float]) -> Iterator[None]:
    """Wrap :data:`TIMED` so each call adds its seconds to ``acc[label]``; restored on exit."""
    saved = [(o, a, getattr(o, a)) for o, a, _ in TIMED]

    def wrap(f: Callable, label: str) -> Callable:
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return f(*args, **kw)
            finally:
                acc[label] += time.perf_counter() - t0

        return timed

    for o, a, label in TIMED:
        setattr(o, a, wrap(getattr(o, a), label))
    try:
        yield
    finally:
        for o, a, f in saved:
            setattr(o, a, f)


def split(n: int, rounds: int, tmp: Path, profile: bool = False) -> dict[str, float]:
    """Median seconds per round of each phase and timer (rounds 1..rounds-1)."""
    d = fedsim_scenario(n, rounds, "local", tmp)
    d["engine"] |= {"local_parallel": "off", "cpus_per_actor": 0.5}  # one thread, one group at a time
    sc = parse(d)
    sim = Simulation(sc, prepare(sc), LocalBackend())
    per: list[dict[str, float]] = []
    prof = cProfile.Profile() if profile else None
    for r in range(rounds):
        acc: dict[str, float] = defaultdict(float)
        with timers(acc):
            if prof is not None and r > 0:
                prof.enable()
            rec = sim.step(r)
            if prof is not None:
                prof.disable()
        acc |= rec.phases
        per.append(dict(acc))
    sim.close()
    if prof is not None:
        print(f"# cProfile, N={n}, rounds 1..{rounds - 1} (by own time)")
        pstats.Stats(prof).sort_stats("tottime").print_stats(18)
    keys = set().union(*per[1:])  # (a timer never called in a round: 0)
    med = {k: float(np.median([p.get(k, 0.0) for p in per[1:]])) for k in keys}
    med["round"] = float(np.median([p["train"] + p["aggregate"] for p in per[1:]]))
    t_in = sum(med.get(k, 0.0) for k in ("set_params", "draw", "gather", "ce_grad", "sgd", "message"))
    med["train other"] = med["train"] - t_in
    med["aggregate other"] = med["aggregate"] - med.get("forge", 0.0) - med.get("rule", 0.0)
    return med


ROWS = ("round", "train", "set_params", "draw", "gather", "ce_grad", "sgd", "message", "train other", "aggregate",
        "forge", "rule", "aggregate other", "evaluate", "metrics")


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"# in-process round split (median of rounds 1..{a.rounds - 1}), {load}", flush=True)
    with tempfile.TemporaryDirectory(prefix="round_split_") as td:
        for n in a.sizes:
            med = split(n, a.rounds, Path(td), a.profile)
            batch = floor.client_batch(n, TRAIN["batch_size"], TRAIN_SAMPLES)
            fl, label = floor.floor_seconds(n, batch)
            print(f"# N={n}: floor {fl * 1e6:.1f} µs/client-round ({label}), batch {batch}, "
                  f"{floor.flop_per_client_round(batch=batch) / 1e6:.3f} MFLOP/client-round; "
                  f"{load} -> {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())}")
            print(f"{'N':>6} {'part':<16} {'ms/round':>9} {'µs/client-round':>16} {'× floor':>8} {'% of round':>10}")
            for k in ROWS:
                s = med.get(k, 0.0)
                print(f"{n:>6} {k:<16} {s * 1e3:>9.2f} {s / n * 1e6:>16.1f} {s / n / fl:>7.2f}x "
                      f"{100 * s / med['round']:>9.1f}%", flush=True)
    print(f"# load {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())}")


if __name__ == "__main__":
    main(ARGS)
