"""oneMKL's vector-math (VML) kernels chosen in one thread, before two threads can race for them.

torch's CPU build sends contiguous float unary ops (``exp``, ``log``, ``sqrt``, ``tanh``, ... in
float32 and float64) to oneMKL's VML, asking for its high-accuracy kernels. oneMKL chooses a VML
function's kernel when that function is first called; when two threads make that first call at the
same time, one of them can run a low-accuracy kernel for that one call (pytorch/pytorch issue 188792,
oneMKL 2024.2, build 20240605, the one torch 2.13's wheel bundles; not seen with oneMKL 2025.0 or
later). In fedsim that happened with in-process groups side by side (``engine.local_parallel: auto``):
the two groups' first local steps (``fedsim.heads.ce_grad``'s ``exp``) raced, and in about one process
in eight (21 of 162 counted) one group's round-0 numbers differed in the last bit (docs/performance.md,
"In-process groups side by side"). It can happen wherever a process's first VML calls run on several threads at once:
groups side by side, a group's intra-op threads (``cpus_per_actor`` > 1), a Ray actor's.

:func:`warm` calls every VML function torch uses once, on one element, in float32 and float64, in the
calling thread, once per process (the upstream fix, pytorch/pytorch pull request 188791, does the same
inside torch). :class:`fedsim.peers.PeerGroup` and :class:`fedsim.server.Server` call it as they are
built: in the driver before any in-process group runs, in each Ray actor before its first call.
"""

from __future__ import annotations

import threading

# the functions torch's aten/src/ATen/cpu/vml.h sends to oneMKL's VML (IMPLEMENT_VML_MKL), float and double
VML_OPS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt",
           "tan", "tanh", "trunc")

_lock = threading.Lock()
_warmed = False


def warm() -> None:
    """Call each of :data:`VML_OPS` once on a one-element float32 and float64 tensor, in this thread,
    the first time this process asks (later calls return at once)."""
    global _warmed
    if _warmed:
        return
    with _lock:
        if _warmed:
            return
        import torch

        for dtype in (torch.float32, torch.float64):
            x = torch.full((1,), 0.5, dtype=dtype)
            for name in VML_OPS:
                getattr(torch, name)(x)
        _warmed = True
