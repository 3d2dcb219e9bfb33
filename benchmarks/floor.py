"""The arithmetic floor of the vs-Flower workload: what one client-round costs when nothing but
its arithmetic runs.

One client-round of ``benchmarks/vs_flower.py`` is ``steps`` local SGD steps of a linear softmax
head (``C`` classes × ``d`` features + bias) on a minibatch of ``batch`` rows: per step a forward
GEMM (the logits), the softmax, and the backward GEMM for the weight gradient — 2 GEMMs,
``steps · 2 · 2·batch·d·C`` FLOP (5 · 2 · 2·32·576·10 ≈ 3.7 MFLOP at N = 100), plus the bias
gradient (a row sum). The floor runs exactly that for ``N`` clients as one tight batched loop
(``torch.baddbmm``/``torch.bmm`` over all clients at once, minibatches already gathered, no data
loading, no aggregation, no framework) and reports seconds per client-round. A client's minibatch
is ``min(batch, shard)``: with 8,000 samples shared by N = 1,000 clients each holds 7 training
rows (the 8th is its validation split), and fedsim then trains on the 7 rows, weighted
(``--samples``/``--shard`` set it).

A floor must be the fastest way to do that arithmetic on this machine, so :func:`floor_seconds`
times every :data:`VARIANTS` entry (layout of the weights: ``cd`` = ``W [C, d]`` as
:mod:`fedsim.heads` holds them, logits ``W xᵀ`` and ``∂W = g x``; ``dc`` = ``W [d, C]``, logits
``x W`` and ``∂W = xᵀ g``; ``xt``: a pre-transposed contiguous copy of ``x`` for the GEMM that
reads ``xᵀ``; ``out``: preallocated ``out=`` buffers and an in-place softmax; ``fresh``: a distinct
gathered minibatch per step, or one minibatch buffer reused by every step, as the workload's
per-step gather leaves it in cache; ``chunk``: clients trained through all their steps ``chunk``
at a time, whose heads and rows stay in cache) at 1 and 2 torch threads, and returns the fastest.
Every variant's step is the same arithmetic (``tests/test_floor.py``: its update equals
:func:`fedsim.heads.ce_grad`'s SGD step, and its FLOP the formula). ``vs_flower.py`` divides
fedsim's cost per client-round by this number (the "floor ratio").

    python benchmarks/floor.py --sizes 100,1000
"""

from __future__ import annotations

import argparse
import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import _cli  # benchmarks/ is on sys.path when run as a script

D, C, BATCH, STEPS, LR = 576, 10, 32, 5, 1.0
SAMPLES, VAL_FRACTION = 8000, 0.1  # vs_flower's training pool and fedsim's default local validation split


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, parsed before the heavy imports below when run as a script (``--help``
    and a bad argument answer without importing torch, Ray or fedsim)."""
    ap = _cli.parser(__doc__)
    ap.add_argument("--sizes", type=_cli.counts, default="100,1000", help="client counts N (comma-separated)")
    ap.add_argument("--threads", type=_cli.counts, default="1,2", help="torch thread counts to try (comma-separated)")
    ap.add_argument("--samples", type=_cli.count, default=SAMPLES, help="training samples shared by the N clients")
    ap.add_argument("--repeats", type=_cli.count, default=5, help="timings per variant (the best is kept)")
    return ap.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else None

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: as fedsim/__init__.py sets it
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One way to run the floor's arithmetic (see the module docstring)."""

    layout: str = "cd"  # "cd": W [n, C, d] (fedsim.heads); "dc": W [n, d, C]
    xt: bool = False  # a pre-transposed contiguous xᵀ for the GEMM that reads it
    out: bool = False  # out= buffers for the logits and the weight gradient, softmax in place

    @property
    def name(self) -> str:
        return self.layout + ("+xt" if self.xt else "") + ("+out" if self.out else "")


VARIANTS = tuple(Variant(lay, xt, out) for lay in ("cd", "dc") for xt in (False, True) for out in (False, True))


def flop_per_client_round(d: int = D, c: int = C, batch: int = BATCH, steps: int = STEPS) -> float:
    """FLOP of the two GEMMs per step (forward logits, backward weight gradient)."""
    return steps * 2 * (2.0 * batch * d * c)


def client_batch(n: int, batch: int = BATCH, samples: int = SAMPLES, val_fraction: float = VAL_FRACTION) -> int:
    """The rows a client's local step really multiplies: ``min(batch, its training shard)`` for an
    iid split of ``samples`` among ``n`` clients less each one's validation split (fedsim trains a
    shard smaller than the batch as the whole shard, weighted by draw counts: ``fedsim.peers``)."""
    if n < 1 or samples < n:
        raise ValueError(f"need 1 <= n <= samples, got n={n}, samples={samples}")
    shard = samples // n
    nv = max(int(round(shard * val_fraction)), 1) if shard >= 2 else 0
    return max(1, min(batch, shard - nv))


def inputs(v: Variant, x: Tensor, y: Tensor, c: int = C) -> tuple[Tensor, Tensor | None, Tensor]:
    """What variant ``v`` reads for minibatches ``x [..., n, B, d]``, labels ``y [..., n, B]``:
    ``x``, its contiguous transpose (``v.xt``; else None) and the one-hot labels in the logits'
    orientation (``cd``: ``[..., n, C, B]``; ``dc``: ``[..., n, B, C]``)."""
    onehot = torch.nn.functional.one_hot(y, c).to(x.dtype)
    if v.layout == "cd":
        onehot = onehot.transpose(-1, -2).contiguous()
    return x, (x.transpose(-1, -2).contiguous() if v.xt else None), onehot


def heads(v: Variant, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Heads in fedsim's layout ``w [n, C, d]``, ``b [n, C]`` as variant ``v`` holds them (copies)."""
    if v.layout == "cd":
        return w.clone(), b[:, :, None].clone()
    return w.transpose(1, 2).contiguous(), b[:, None, :].clone()


def as_fedsim(v: Variant, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`heads` undone: ``(w [n, C, d], b [n, C])``."""
    return (w, b[:, :, 0]) if v.layout == "cd" else (w.transpose(1, 2), b[:, 0, :])


def sgd_step(v: Variant, w: Tensor, b: Tensor, x: Tensor, xt: Tensor | None, onehot: Tensor, lr: float,
             buf: tuple[Tensor, Tensor] | None = None) -> None:
    """One SGD step of the mean cross-entropy on minibatch ``x [n, B, d]`` for heads ``w, b`` held as
    variant ``v`` holds them (:func:`heads`), in place. ``buf`` (``v.out``): the logits' and the
    weight gradient's buffers."""
    bsz = x.shape[1]
    xT = xt if xt is not None else x.transpose(1, 2)
    # "cd": logits [n, C, B] = W xᵀ + b, ∂W = g x; "dc": logits [n, B, C] = x W + b, ∂W = xᵀ g; ∂b = Σ_B g
    cd = v.layout == "cd"
    left, right, cls = (w, xT, 1) if cd else (x, w, 2)
    gw_of = (lambda g: (g, x)) if cd else (lambda g: (xT, g))
    if buf is None:
        g = torch.softmax(torch.baddbmm(b, left, right), cls).sub_(onehot)
        gw = torch.bmm(*gw_of(g))
    else:
        g, gw = buf
        torch.baddbmm(b, left, right, out=g)
        g.sub_(g.amax(cls, keepdim=True)).exp_()
        g.div_(g.sum(cls, keepdim=True)).sub_(onehot)
        torch.bmm(*gw_of(g), out=gw)
    w.sub_(gw, alpha=lr / bsz)
    b.sub_(g.sum(3 - cls, keepdim=True), alpha=lr / bsz)


def train(v: Variant, w: Tensor, b: Tensor, data: tuple[Tensor, Tensor | None, Tensor], steps: int, lr: float,
          chunk: int) -> None:
    """``steps`` SGD steps for every client, ``chunk`` clients at a time; ``data`` from :func:`inputs`
    with a leading step dimension (``steps`` minibatches, or 1 reused by every step)."""
    x, xt, onehot = data
    n = w.shape[0]
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        wi, bi = w[i:j], b[i:j]
        buf = None
        if v.out:
            lg = (j - i, w.shape[1], x.shape[2]) if v.layout == "cd" else (j - i, x.shape[2], w.shape[2])
            buf = (w.new_empty(lg), torch.empty_like(wi))
        for s in range(steps):
            k = s % x.shape[0]
            sgd_step(v, wi, bi, x[k, i:j], None if xt is None else xt[k, i:j], onehot[k, i:j], lr, buf)


def time_variant(v: Variant, n: int, batch: int, threads: int, fresh: bool, chunk: int, repeats: int = 5,
                 d: int = D, c: int = C, steps: int = STEPS) -> float:
    """Best-of-``repeats`` seconds per client-round of variant ``v`` for ``n`` clients."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        k = steps if fresh else 1
        data = inputs(v, torch.randn(k, n, batch, d, generator=g), torch.randint(0, c, (k, n, batch), generator=g), c)
        best = float("inf")
        for _ in range(repeats):
            w, b = heads(v, torch.zeros(n, c, d), torch.zeros(n, c))
            t0 = time.perf_counter()
            train(v, w, b, data, steps, LR, chunk)
            best = min(best, time.perf_counter() - t0)
        return best / n
    finally:
        torch.set_num_threads(old)


def floor_seconds(n: int, batch: int = BATCH, threads: Sequence[int] = (1, 2), repeats: int = 5,
                  variants: Sequence[Variant] = VARIANTS, chunks: Sequence[int] = (0, 100, 20),
                  table: list[tuple[str, float]] | None = None) -> tuple[float, str]:
    """The floor: the fastest of every variant × thread count × fresh/reused minibatch × chunk
    (0: all ``n`` clients at once) in seconds per client-round, and its label. ``table``: each
    label's seconds are appended to it."""
    best, label = float("inf"), ""
    for v, th, fresh, ch in itertools.product(variants, threads, (True, False), chunks):
        if ch >= n:
            continue
        chunk = ch or n
        sec = time_variant(v, n, batch, th, fresh, chunk, repeats)
        lab = f"{v.name} {th}t {'fresh' if fresh else 'reused'} {'all' if chunk == n else f'chunk {chunk}'}"
        if table is not None:
            table.append((lab, sec))
        if sec < best:
            best, label = sec, lab
    return best, label


def main(a: argparse.Namespace | None = None) -> None:
    a = _args() if a is None else a
    threads = a.threads
    print(f"# arithmetic floor, threads {threads}, load {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())}")
    for n in a.sizes:
        batch = client_batch(n, samples=a.samples)
        flop = flop_per_client_round(batch=batch)
        rows: list[tuple[str, float]] = []
        sec, label = floor_seconds(n, batch, threads, a.repeats, table=rows)
        print(f"# N={n}: batch {batch}, {flop / 1e6:.3f} MFLOP/client-round")
        for lab, s in sorted(rows, key=lambda r: r[1]):
            print(f"{n:>6} {lab:<34} {s * 1e6:>9.1f} µs/client-round {flop / s / 1e9:>7.2f} GFLOP/s")
        print(f"{n:>6} FLOOR = {label}: {sec * 1e6:.1f} µs/client-round ({flop / sec / 1e9:.2f} GFLOP/s)")
    print(f"# load {'{:.2f} {:.2f} {:.2f}'.format(*os.getloadavg())}")


if __name__ == "__main__":
    main(ARGS)
