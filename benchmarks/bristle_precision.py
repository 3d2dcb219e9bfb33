"""Bristle's integrator, float64 vs float32 (``strategy.params.precision``), on one chunk shaped like
the 100,000-peer round's (issue 19): ``g`` receivers (the engine's ``aggregate_chunk``, 64), ``k = 5``
candidates each, heads of ``P = 10 × 577`` (no bias), one validation sample per peer, float16
candidate rows gathered from two 5,000-row message arrays (two groups) as the engine does
(``fedsim.routing.Rows.take(float32=False)``: Bristle widens them itself).

Both precisions run on the same gathered rows in every rotation, in alternating order; the figure
is the thread CPU time of the ``integrate`` call (the gather excluded), per 64 peers, median over
the rotations, and the ratio float32 / float64 of the medians.

    python benchmarks/bristle_precision.py --rotations 200 --threads 1
"""

from __future__ import annotations

import os
import statistics
import time

import _cli  # benchmarks/ is on sys.path when run as a script


def main() -> None:
    ap = _cli.parser(__doc__)
    ap.add_argument("--rotations", type=_cli.count, default=200)
    ap.add_argument("--chunk", type=_cli.count, default=64, help="receivers per integrate call")
    ap.add_argument("--threads", type=_cli.count, default=1, help="torch threads")
    a = ap.parse_args()

    import torch

    from fedsim.routing import Rows
    from strategies.bristle import Bristle

    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    g, k, c, d, m, n = a.chunk, 5, 10, 577, 1, 10_000
    p = c * d
    parts = [(0.01 * torch.randn(n // 2, p, generator=gen)).half() for _ in range(2)]
    rows = Rows(parts)
    own = 0.01 * torch.randn(g, p, generator=gen)
    vx, vy = torch.rand(g, m, d, generator=gen), torch.randint(0, c, (g, m), generator=gen)
    fam, counts = torch.rand(g, c, generator=gen) > 0.5, torch.randint(0, 4, (g, k), generator=gen)
    rules = {"float64": Bristle(), "float32": Bristle(precision="float32")}
    ms: dict[str, list[float]] = {name: [] for name in rules}
    worst = 0.0
    for rot in range(a.rotations):
        cand = rows.take(torch.randint(0, n, (g, k), generator=gen), float32=False)
        outs = {}
        for name in list(rules)[rot % 2 :] + list(rules)[: rot % 2]:
            t = time.thread_time()
            outs[name] = rules[name].integrate(own, cand, vx, vy, fam, (c, d), False, None, counts)
            ms[name].append((time.thread_time() - t) * 1e3 * 64 / g)
        worst = max(worst, float((outs["float32"] - outs["float64"]).abs().max()))
    med = {name: statistics.median(t) for name, t in ms.items()}
    print(f"chunk {g} x k {k} x P {p}, float16 rows, {a.threads} thread(s), {a.rotations} rotations, "
          f"load {os.getloadavg()[0]:.2f}: integrate thread-CPU ms per 64 peers (median): "
          f"float64 {med['float64']:.2f}, float32 {med['float32']:.2f}, ratio {med['float32'] / med['float64']:.2f}; "
          f"max |float32 - float64| {worst:.2e} (|own| ~ 0.01)")


if __name__ == "__main__":
    main()
