"""Where the bytes of a decentralized scale run are (issue 19): a per-array breakdown.

Runs ``benchmarks/scale.py``'s scenario (decentralized Bristle, push gossip fanout 5) in-process
(``engine.backend: local``) with the engine's own :class:`fedsim.simulation.Simulation` and prints:

1. the process's RSS after the imports (interpreter, torch, numpy, fedsim), after ``prepare``
   (features, partition, topology) and after the groups are built;
2. every array a group holds (tensors and NumPy arrays among its attributes, its optimizer state
   and its set-up; shared storage counted once, under the first name met) and the driver's
   features;
3. for every group's ``train`` / ``aggregate`` / ``evaluate`` call of the measured rounds, the RSS
   when it started and its peak during the call (sampled every 2 ms), and the bytes of the
   messages it returned: the transient of each phase is peak − start.

    python benchmarks/scale_memory.py --peers 10000 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--peers", type=_cli.count, default=10000)
    ap.add_argument("--rounds", type=_cli.count, default=2)
    ap.add_argument("--strategy", default="bristle")
    ap.add_argument("--num-actors", type=_cli.count, default=2)
    ap.add_argument("--message-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--head-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--replicate", type=_cli.index, default=0)
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from fedsim.backend import LocalBackend  # noqa: E402
from fedsim.peers import PeerGroup  # noqa: E402
from fedsim.runner import prepare  # noqa: E402
from fedsim.scenario import parse  # noqa: E402
from fedsim.simulation import Simulation  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from scale import load, release_memory, scenario  # noqa: E402  (benchmarks/ is not a package)

MB = 2**20


def rss() -> int:
    return psutil.Process().memory_info().rss


class Peak:
    """The peak RSS of this process while the block runs (a thread samples every ``interval`` s)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.start, self.peak = interval, 0, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> Peak:
        self.start = self.peak = rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss())


def _storage(x: Any) -> tuple[int, int] | None:
    """(address, bytes) of the memory behind a tensor or NumPy array (None for anything else)."""
    if isinstance(x, torch.Tensor):
        s = x.untyped_storage()
        return s.data_ptr(), s.nbytes()
    if isinstance(x, np.ndarray):
        base = x
        while isinstance(base.base, np.ndarray):
            base = base.base
        return base.__array_interface__["data"][0], base.nbytes
    return None


def arrays(obj: Any, prefix: str, seen: set[int], out: dict[str, int], depth: int = 0) -> dict[str, int]:
    """Bytes per attribute path of the arrays reachable from ``obj`` (its attributes, dataclasses,
    lists, tuples and dicts, three levels deep); a storage already in ``seen`` is not counted again."""
    st = _storage(obj)
    if st is not None:
        if st[0] not in seen and st[1]:
            seen.add(st[0])
            key = prefix.split("[")[0]
            out[key] = out.get(key, 0) + st[1]
        return out
    if depth > 3:
        return out
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            arrays(v, f"{prefix}[{i}]", seen, out, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            arrays(v, f"{prefix}.{k}", seen, out, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        if not type(obj).__module__.startswith(("fedsim", "attacks", "strategies", "builtins")):
            return out
        for k, v in vars(obj).items():
            arrays(v, f"{prefix}.{k}" if prefix else k, seen, out, depth + 1)
    return out


def instrument(log: list[tuple[str, int, int, int]]) -> None:
    """Wrap PeerGroup's round calls so that each records (call, start RSS, peak RSS, message bytes)."""

    def wrap(name: str, fn: Callable) -> Callable:
        def call(self: PeerGroup, *args: Any, **kw: Any) -> Any:
            with Peak() as p:
                res = fn(self, *args, **kw)
            msg = res[0].nbytes if name == "train" else 0
            log.append((f"group {self.s.first // max(1, self.p)} {name}", p.start, p.peak, msg))
            return res

        return call

    for name in ("train", "aggregate", "evaluate"):
        setattr(PeerGroup, name, wrap(name, getattr(PeerGroup, name)))


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    sargs = argparse.Namespace(
        partition="iid", alpha=0.5, fanout=5, eval_every=1, eval_peers=100, backend="local",
        num_actors=a.num_actors, cpus_per_actor=0.5, message_dtype=a.message_dtype, replicate_path=None,
        head_dtype=a.head_dtype, device="cpu", aggregate_chunk=None,
    )
    torch.set_num_threads(1)
    release_memory()
    r_import = rss()
    print(f"# scale_memory: {a.peers} peers, {a.strategy}, {a.num_actors} groups in-process, messages "
          f"{a.message_dtype}, heads {a.head_dtype}, {a.rounds} rounds; {load()}; "
          f"engine: {Path(prepare.__code__.co_filename).parent}")
    log: list[tuple[str, int, int, int]] = []
    with tempfile.TemporaryDirectory(prefix="scale19_mem_") as td:
        if a.replicate:
            from scale import replicated

            sargs.replicate_path = replicated(a.replicate, Path(td))
        sc = parse(scenario(a.peers, a.rounds, sargs, a.strategy, Path(td)))
        with Peak() as p_prep:
            prep = prepare(sc)
        release_memory()
        r_prep = rss()
        with Peak() as p_groups:
            sim = Simulation(sc, prep, LocalBackend())
        release_memory()
        r_groups = rss()
        instrument(log)
        with Peak() as p_rounds:
            for r in range(a.rounds):
                sim.step(r)
    print(f"{'stage':<44} {'RSS MB':>8} {'Δ MB':>8} {'peak MB':>8}")
    print(f"{'imports (interpreter, torch, numpy, fedsim)':<44} {r_import / MB:>8.0f} {r_import / MB:>8.0f}")
    print(f"{'prepare (features, partition, topology)':<44} {r_prep / MB:>8.0f} {(r_prep - r_import) / MB:>8.0f} "
          f"{p_prep.peak / MB:>8.0f}")
    print(f"{'groups built':<44} {r_groups / MB:>8.0f} {(r_groups - r_prep) / MB:>8.0f} {p_groups.peak / MB:>8.0f}")
    seen: set[int] = set()
    feats = arrays({k: getattr(prep.features, k) for k in ("x_train", "y_train", "x_test", "y_test")}, "features",
                   seen, {})
    print("# arrays held (MB; shared storage once):")
    for k, v in feats.items():
        print(f"  driver {k:<40} {v / MB:>8.1f}")
    total = sum(feats.values())
    for i, h in enumerate(sim.groups):
        g = h._obj
        got = arrays(g, "", seen, {})
        for k, v in sorted(got.items(), key=lambda kv: -kv[1]):
            if v >= MB / 10:
                print(f"  group {i} {k:<39} {v / MB:>8.1f}")
        total += sum(got.values())
        print(f"  group {i} {'(total)':<39} {sum(got.values()) / MB:>8.1f}")
    print(f"  {'all arrays':<46} {total / MB:>8.1f}")
    print("# round calls: RSS at start, peak during the call, transient (peak - start), messages returned (MB)")
    for name, start, peak, msg in log:
        print(f"  {name:<26} start {start / MB:>7.0f} peak {peak / MB:>7.0f} transient {(peak - start) / MB:>6.0f}"
              + (f" messages {msg / MB:.0f}" if msg else ""))
    print(f"# peak RSS over the rounds {p_rounds.peak / MB:.0f} MB; {load()}")


if __name__ == "__main__":
    main(ARGS)
