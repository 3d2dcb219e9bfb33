"""The arithmetic floor of the vs-Flower workload: what one client-round costs when nothing but
its arithmetic runs.

One client-round of ``benchmarks/vs_flower.py`` is ``steps`` local SGD steps of a linear softmax
head ``W [C, d]`` (+ bias) on minibatches ``[batch, d]``: per step a forward GEMM
(``batch × d × C``), the softmax, and the backward GEMM for ``dW`` — 2 GEMMs, about
``steps · 2 · 2·batch·d·C`` FLOP (5 · 2 · 2·32·576·10 ≈ 3.7 MFLOP). The floor runs exactly that
for ``N`` clients as one tight batched loop (``torch.bmm`` over all clients at once, features
already gathered, no data loading, no aggregation, no framework), with the thread count given,
and reports seconds per client-round. A client's minibatch is ``min(batch, shard)``: with
8,000 training samples shared by N = 1,000 clients each holds 8, so a step is a quarter of the
work (``--samples`` sets the pool). ``vs_flower.py`` divides fedsim's cost per client-round by
this number (the "floor ratio").

    python benchmarks/floor.py --sizes 100,1000 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: as fedsim/__init__.py sets it
import torch  # noqa: E402

D, C, BATCH, STEPS, LR = 576, 10, 32, 5, 1.0


def flop_per_client_round(d: int = D, c: int = C, batch: int = BATCH, steps: int = STEPS) -> float:
    """FLOP of the two GEMMs per step (forward logits, backward weight gradient)."""
    return steps * 2 * (2.0 * batch * d * c)


def floor_seconds(n: int, threads: int = 1, repeats: int = 5, d: int = D, c: int = C, batch: int = BATCH,
                  steps: int = STEPS) -> float:
    """Best-of-``repeats`` seconds per client-round for ``n`` clients trained as one batched loop."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(steps, n, batch, d, generator=g)
        y = torch.randint(0, c, (steps, n, batch), generator=g)
        onehot = torch.nn.functional.one_hot(y, c).float()
        best = float("inf")
        for _ in range(repeats):
            w = torch.zeros(n, d, c)
            b = torch.zeros(n, 1, c)
            t0 = time.perf_counter()
            for s in range(steps):
                z = torch.baddbmm(b, x[s], w)  # [n, batch, C]
                p = torch.softmax(z, -1).sub_(onehot[s]).div_(batch)  # dL/dz of the mean cross-entropy
                w.sub_(torch.bmm(x[s].transpose(1, 2), p), alpha=LR)  # dW = x^T dz
                b.sub_(p.sum(1, keepdim=True), alpha=LR)
            best = min(best, time.perf_counter() - t0)
        return best / n
    finally:
        torch.set_num_threads(old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000", help="client counts N (comma-separated)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every CPU)")
    ap.add_argument("--samples", type=int, default=8000, help="training samples shared by the N clients")
    a = ap.parse_args()
    load = "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"# arithmetic floor, {a.threads} thread(s), {load}")
    print(f"{'N':>6} {'batch':>5} {'MFLOP/client-round':>18} {'µs/client-round':>16} {'GFLOP/s':>8}")
    for n in (int(s) for s in a.sizes.split(",")):
        batch = max(1, min(BATCH, a.samples // n))
        flop = flop_per_client_round(batch=batch)
        sec = floor_seconds(n, a.threads, batch=batch)
        print(f"{n:>6} {batch:>5} {flop / 1e6:>18.2f} {sec * 1e6:>16.1f} {flop / sec / 1e9:>8.2f}")


if __name__ == "__main__":
    main()
