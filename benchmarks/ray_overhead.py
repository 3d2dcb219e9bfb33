"""What one federated round costs in Ray itself, with no training and no aggregation.

The call pattern of ``fedsim.runner.Run`` in federated mode, on actors that do nothing: the
server hands out the global model, two peer-group actors each return their clients' heads, the
server receives them and answers the driver. Once with small messages and once with messages of
the size fedsim's groups send (``[N/2, P]`` float32 per group: 1.15 MB each at N = 100 clients
of the 5,770-parameter MNIST head), which Ray passes through its shared-memory object store.
The difference is the floor that Ray's object store puts under a round on this machine, however
fast the training; ``engine.backend: local`` (in-process) has none of it.

    python benchmarks/ray_overhead.py                 # N = 100
    python benchmarks/ray_overhead.py --clients 1000

The last three lines are fedsim's own federated round pattern, heads with a loss each, before and
after issue 19: the driver used to wait for the losses, then for the server, and asked the server
for the global model in a call of its own; then the aggregation was submitted with the training
(the driver waits once) and its reply carried the next round's global model; now, in addition, the
heads go through each group's shared-memory outbox (``fedsim.ray_outbox``, ``engine.ray_shared_memory``)
instead of Ray's object store.
"""

from __future__ import annotations

import argparse
import importlib
import os
import time

import _cli  # benchmarks/ is on sys.path when run as a script


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--clients", type=_cli.count, default=100, help="clients N (split over 2 group actors)")
    ap.add_argument("--rounds", type=_cli.count, default=200)
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

import numpy as np  # noqa: E402

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
import ray  # noqa: E402

P = 10 * 576 + 10  # the MNIST head on fmnist_cnn features


class IdleActor:
    """An actor that does nothing: its heads ``[rows, P]`` and the global head, returned as they are."""

    def __init__(self, rows: int) -> None:
        self.heads = np.zeros((rows, P), dtype=np.float32)
        self.global_ = np.zeros(P, dtype=np.float32)

    def get_global(self) -> np.ndarray:
        return self.global_

    def small(self, *_: object) -> int:
        return 1

    def train(self, *_: object) -> np.ndarray:
        return self.heads

    def train_loss(self, *_: object) -> tuple[np.ndarray, float]:
        return self.heads, 0.0

    def aggregate(self, *_: object) -> dict:
        return {"dropped": 0}

    def aggregate_and_global(self, *_: object) -> tuple[dict, np.ndarray]:
        return {"dropped": 0}, self.global_


Idle = ray.remote(num_cpus=1)(IdleActor)


class IdleGroup(IdleActor):
    """:class:`IdleActor` with fedsim's round protocol, the one :func:`fedsim.ray_outbox.with_outbox`
    wraps: ``train`` returns the heads and a loss, the server's ``aggregate_and_global`` reads them
    through ``aggregate`` (where the wrapper reads the outboxes)."""

    def train(self, *_: object) -> tuple[np.ndarray, float]:
        return self.train_loss()

    def aggregate_and_global(self, *params: object) -> tuple[dict, np.ndarray]:
        return self.aggregate(*params), self.global_


class _Now:
    """:func:`fedsim.ray_outbox.connect`'s backend: ``ray.get``."""

    def get(self, refs: object) -> object:
        return ray.get(refs)


def per_round_ms(fn, rounds: int) -> float:
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - t0) / rounds * 1e3


def two_waits(groups: list, server) -> None:
    """fedsim's federated round before issue 19: get_global, train (heads + a loss each), wait
    for the losses, then aggregate and wait again."""
    g = server.get_global.remote()
    out = [x.train_loss.options(num_returns=2).remote(g) for x in groups]
    ray.get([o[1] for o in out])
    ray.get(server.aggregate.remote(*[o[0] for o in out]))


def pipelined(groups: list, server, state: dict) -> None:
    """fedsim's federated round now (``Simulation.step``): the aggregation is submitted with the
    training, the driver waits once, and the reply carries the next round's global model."""
    out = [x.train_loss.options(num_returns=2).remote(state["g"]) for x in groups]
    stats, state["g"] = server.aggregate_and_global.options(num_returns=2).remote(*[o[0] for o in out])
    ray.get([*[o[1] for o in out], stats])


def through_outboxes(groups: list, server, state: dict) -> None:
    """:func:`pipelined` with the heads posted to the groups' outboxes (``fedsim.ray_outbox``)."""
    state["r"] += 1
    out = [x.train.options(num_returns=2).remote(state["r"], state["g"]) for x in groups]
    stats, state["g"] = server.aggregate_and_global.options(num_returns=2).remote(state["r"], *[o[0] for o in out])
    ray.get([*[o[1] for o in out], stats])


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    ray.init(num_cpus=3, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        groups = [Idle.remote(a.clients // 2) for _ in range(2)]
        server = Idle.remote(0)
        ray.get([x.small.remote() for x in (*groups, server)])
        one = per_round_ms(lambda: ray.get(groups[0].small.remote()), a.rounds)
        small = per_round_ms(
            lambda: ray.get(server.aggregate.remote(*[g.small.remote(server.get_global.remote()) for g in groups])),
            a.rounds,
        )
        full = per_round_ms(
            lambda: ray.get(server.aggregate.remote(*[g.train.remote(server.get_global.remote()) for g in groups])),
            a.rounds,
        )
        full_two_waits = per_round_ms(lambda: two_waits(groups, server), a.rounds)
        state = {"g": server.get_global.remote()}
        piped = per_round_ms(lambda: pipelined(groups, server, state), a.rounds)
        for h in (*groups, server):  # (their CPUs, for the actors below)
            ray.kill(h)
        ray_outbox = importlib.import_module("fedsim.ray_outbox")
        cls = ray.remote(num_cpus=1)(ray_outbox.with_outbox(IdleGroup))
        og = [cls.remote(a.clients // 2) for _ in range(2)]
        osrv = cls.remote(0)
        if not ray_outbox.connect(_Now(), [*og, osrv], og, ray_outbox.Inbox()):
            raise SystemExit("ray_overhead: the actors cannot open each other's outboxes")
        ostate = {"g": ray.put(np.zeros(P, dtype=np.float32)), "r": 0}
        outboxes = per_round_ms(lambda: through_outboxes(og, osrv, ostate), a.rounds)
    finally:
        ray.shutdown()
    mb = a.clients // 2 * P * 4 / 1e6
    print(f"# Ray {ray.__version__}, {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"one actor call, small reply:                          {one:6.2f} ms")
    print(f"federated round pattern, small messages:              {small:6.2f} ms")
    print(f"federated round pattern, 2 x {mb:.2f} MB of heads:      {full:6.2f} ms")
    print(f"object-store cost of the heads per round:             {full - small:6.2f} ms")
    print(f"through the object store per round: 2 x {mb:.2f} MB of heads (put once; the server maps them)")
    print(f"fedsim's round before issue 19 (2 driver waits):      {full_two_waits:6.2f} ms")
    print(f"fedsim's round, 1 wait, global in the reply:          {piped:6.2f} ms")
    print(f"... and the heads through the groups' outboxes (now): {outboxes:6.2f} ms")


if __name__ == "__main__":
    main(ARGS)
