"""Time and memory per peer-round of whole-model training (issue 18), against today's linear head.

Each configuration runs in its own process (so peak RSS is its own): the scenario's first peer
group is built (features / frozen prefix computed first, not timed), then ``--rounds`` rounds of
local training (``PeerGroup.train``: ``local_steps`` minibatch steps for all ``p`` peers at once)
are timed. Reported per peer-round: wall time, and the peak resident memory the training adds
over the group's state before it (``ru_maxrss`` high-water mark minus the RSS before training),
divided by ``p``; plus the trainable parameter count and the exchanged message size.

``--step-only`` times just the gradient computation of the whole CNN (one ``vmap(grad)`` call over
``p`` peers vs a loop of ``p`` modules' forward + backward, 3 repetitions each, after a warm-up):
the batching itself, without minibatch gathering or the optimizer.

``--batching`` (``vmap``, the default, as the table in ``docs/whole-model.md`` was measured;
``loop``; ``auto``): the whole-model configurations' ``model.batching`` (how the group computes its
peers' gradients, :func:`fedsim.stacked.resolve_batching`); ``--step-only`` times both.

``--loop`` adds, for each whole-model configuration, the same training as ``p`` separate
``nn.Module`` copies with ``torch.optim.SGD`` in a Python loop (the batched path's baseline).

    PYTHONPATH=. python benchmarks/whole_model.py --peers 16 --rounds 2 --loop
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import _cli  # benchmarks/ is on sys.path when run as a script

CONFIGS = {
    "head (linear, today)": {},
    "head MLP [128]": {"model": {"hidden": [128]}},
    "last_k 2 (conv2 + linear)": {"model": {"trainable": "last_k", "k": 2}},
    "all, pretrained": {"model": {"trainable": "all"}},
    "all, scratch": {"model": {"trainable": "all", "init": "scratch"}},
}


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def measure(name: str, peers: int, rounds: int, loop: bool, batching: str = "vmap") -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from fedsim.peers import PeerGroup
    from fedsim.prepare import prepare
    from fedsim.scenario import parse

    d = {
        "seed": 0,
        "dataset": {"name": "mnist10k"},
        "backbone": {"name": "fmnist_cnn"},
        "partition": {"kind": "iid"},
        "peers": {"count": peers},
        "topology": {"kind": "complete"},
        "training": {"lr": 0.05, "batch_size": 32, "local_steps": 5},
        "engine": {"backend": "local", "num_actors": 1},
    } | CONFIGS[name]
    if "model" in d:
        d["model"] = d["model"] | {"batching": batching}
    sc = parse(d)
    prep = prepare(sc)
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    if sc.model.whole:
        from fedsim.whole import WholePeerGroup

        g = WholePeerGroup(prep.setups[0], feats)
    else:
        g = PeerGroup(prep.setups[0], feats)
    g.train(0)  # warm-up (vmap/MKL first-call costs)
    rss0 = _rss_kib()
    t0 = time.perf_counter()
    for r in range(1, rounds + 1):
        g.train(r)
    sec = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {
        "config": name,
        "peers": peers,
        "trainable_params": prep.num_params,
        "message_bytes": prep.bytes_per_message,
        "ms_per_peer_round": 1e3 * sec / (rounds * peers),
        "peak_extra_kib_per_peer": max(0, peak - rss0) / peers,
        "input_shape": list(f.x_train.shape[1:]),
    }
    if loop and sc.model.whole:
        from fedsim.models.trainable import split

        _, suffix = split(prep.setups[0].model)
        models = [copy.deepcopy(suffix) for _ in range(peers)]
        t = sc.training
        opts = [torch.optim.SGD(m.parameters(), lr=t.lr, momentum=t.momentum) for m in models]
        t0 = time.perf_counter()
        for r in range(1, rounds + 1):
            for k in range(t.local_steps):
                x, y = g._batch(r, k)
                for j in range(peers):
                    opts[j].zero_grad()
                    torch.nn.functional.cross_entropy(models[j](x[j]), y[j]).backward()
                    opts[j].step()
        out["loop_ms_per_peer_round"] = 1e3 * (time.perf_counter() - t0) / (rounds * peers)
    del np
    return out


def step_only(peers: int) -> None:
    import torch

    torch.set_num_threads(1)
    from fedsim.models.trainable import ModelPlan, split
    from fedsim.stacked import StackedModel

    plan = ModelPlan("fmnist_cnn", "all", 0, (), "scratch", "params", True, 0, 576, 10)
    suffix = split(plan)[1]
    x, y = torch.randn(peers, 32, 1, 28, 28), torch.randint(0, 10, (peers, 32))
    per_step = {}
    for mode in ("vmap", "loop"):
        m = StackedModel(suffix, peers, batching=mode)
        m.loss_and_grad(x, y)
        t0 = time.perf_counter()
        for _ in range(3):
            m.loss_and_grad(x, y)
        per_step[mode] = (time.perf_counter() - t0) / 3 / peers
    mods = [copy.deepcopy(suffix) for _ in range(peers)]
    t0 = time.perf_counter()
    for _ in range(3):
        for j in range(peers):
            mods[j].zero_grad()
            torch.nn.functional.cross_entropy(mods[j](x[j]), y[j]).backward()
    loop = (time.perf_counter() - t0) / 3 / peers
    print(f"# whole fmnist_cnn, batch 32, {peers} peers, 1 thread, load {os.getloadavg()[0]:.2f}: "
          f"vmap(grad) {1e3 * per_step['vmap']:.1f} ms / peer-step, grad per peer (batching: loop) "
          f"{1e3 * per_step['loop']:.1f} ms, loop of modules {1e3 * loop:.1f} ms / peer-step")


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--peers", type=_cli.count, default=16)
    ap.add_argument("--rounds", type=_cli.count, default=2)
    ap.add_argument("--loop", action="store_true")
    ap.add_argument("--step-only", action="store_true")
    ap.add_argument("--batching", default="vmap", choices=("vmap", "loop", "auto"),
                    help="model.batching of the whole-model configurations")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.step_only:
        step_only(a.peers)
        return
    if a.one:
        print(json.dumps(measure(a.one, a.peers, a.rounds, a.loop, a.batching)))
        return
    print(f"# whole-model training, mnist10k / fmnist_cnn, batch 32, 5 local steps, {a.peers} peers in one group, "
          f"1 torch thread, {a.rounds} timed rounds, model.batching {a.batching}; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| config | trainable params | message bytes | ms / peer-round | loop of nn.Modules ms / peer-round "
          "| peak extra MiB / peer |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--one", name, "--peers", str(a.peers), "--rounds", str(a.rounds),
               "--batching", a.batching]
        res = json.loads(subprocess.run(cmd + (["--loop"] if a.loop else []), capture_output=True, text=True,
                                        check=True).stdout.strip().splitlines()[-1])
        loop = f"{res['loop_ms_per_peer_round']:.1f}" if "loop_ms_per_peer_round" in res else "–"
        print(f"| {name} | {res['trainable_params']:,} | {res['message_bytes']:,} | {res['ms_per_peer_round']:.2f} "
              f"| {loop} | {res['peak_extra_kib_per_peer'] / 1024:.2f} |", flush=True)
    print(f"# load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
