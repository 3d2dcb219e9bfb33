"""oneMKL's code path fixed per CPU (``MKL_CBWR``), so a seed gives the same bits in every process.

torch's CPU build calls Intel oneMKL for the linear heads' products (``torch.bmm``/``baddbmm``:
``SGEMM_BATCH``; the evaluation's ``SGEMM``). Without its Conditional Numerical Reproducibility
(CNR) mode, oneMKL picks a code path in each process when it is first called, and the paths give
different bits. On the 2-core AVX-512 machine of docs/performance.md ("Reproducible to the bit")
one process in about a hundred under load wrote another ``metrics.jsonl``; it is exactly the file
that ``MKL_CBWR=AVX2`` gives, while ``MKL_CBWR=AVX512`` gives the usual one: that process ran MKL's
AVX2 path. :func:`fix_branch` sets ``MKL_CBWR`` to the branch the CPU's flags name (the path MKL
takes there when nothing disturbs it: the same numbers), which turns CNR on. ``import fedsim``
calls it; oneMKL reads the variable at its first call, so it works after ``import torch`` too, but
not after a torch product has run. A user's own ``MKL_CBWR`` is kept (and
``MKL_ENABLE_INSTRUCTIONS``, which oneMKL obeys before it, still applies). Intel CPUs on Linux
only (vendor and flags from ``/proc/cpuinfo``; oneMKL's branches are Intel's code paths, and how it
treats them on other vendors' CPUs was not measured); elsewhere, or on a CPU with neither branch,
nothing is set.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV = "MKL_CBWR"
INTEL = "GenuineIntel"  # /proc/cpuinfo's vendor_id of Intel CPUs

# oneMKL's CNR branches by the CPU flags they need (Linux /proc/cpuinfo names), widest first:
# AVX512 is Skylake-SP's AVX-512 (F, CD, BW, DQ, VL), AVX2 Haswell's (AVX2 and FMA)
BRANCHES: tuple[tuple[str, frozenset[str]], ...] = (
    ("AVX512", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("AVX2", frozenset({"avx2", "fma"})),
)


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """The first CPU's vendor and flags in ``path`` (``""`` and none where there is no such file or
    line: not Linux, not x86)."""
    vendor, flags = "", frozenset[str]()
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    return vendor, flags


def branch_for(vendor: str, flags: frozenset[str]) -> str | None:
    """The widest of :data:`BRANCHES` whose flags are all in ``flags`` on an Intel CPU; None if
    there is none or the vendor is another."""
    if vendor != INTEL:
        return None
    return next((name for name, need in BRANCHES if need <= flags), None)


def fix_branch(
    environ: MutableMapping[str, str] | None = None, cpu: tuple[str, frozenset[str]] | None = None
) -> str | None:
    """Set ``MKL_CBWR`` in ``environ`` (default ``os.environ``) to :func:`branch_for` the CPU
    (``cpu``: vendor and flags, default :func:`cpu_info`) unless it is set already. Returns the value
    in effect (None: unset, no branch for this CPU)."""
    env = os.environ if environ is None else environ
    if ENV in env:
        return env[ENV]
    branch = branch_for(*(cpu_info() if cpu is None else cpu))
    if branch is not None:
        env[ENV] = branch
    return branch
