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
not after a torch product has run. A user's own ``MKL_CBWR`` is kept; a user's
``MKL_ENABLE_INSTRUCTIONS``, which oneMKL obeys before it, narrows the branch set to the one it
allows (``AVX2``: :func:`fix_branch`). Intel CPUs on Linux
only (vendor and flags from ``/proc/cpuinfo``; oneMKL's branches are Intel's code paths, and how it
treats them on other vendors' CPUs was not measured); elsewhere, or on a CPU with neither branch,
nothing is set.

On Ray the driver passes the ``MKL_CBWR`` it runs with to every worker it starts actors or tasks in
(:func:`worker_env`, ``runtime_env={"env_vars": ...}``: :mod:`fedsim.backend`), so the workers of a
cluster started apart (``ray start``, whose workers have each node's environment) run the driver's
branch. On a node whose CPU lacks that branch, oneMKL ignores the variable and runs its ``AUTO``
branch, with no warning (Intel's oneMKL developer guide, "Getting Started with Conditional
Numerical Reproducibility": "the AUTO branch is used instead"): reproducible there, but maybe other
bits. :func:`current` asks oneMKL which branch a process runs; a run records the driver's and its
actors' in ``versions.json`` and warns where they differ (:func:`differing`).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

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


INSTRUCTIONS = "MKL_ENABLE_INSTRUCTIONS"  # the user's cap on oneMKL's instruction set, obeyed before MKL_CBWR
# oneMKL's CNR branches (CODES) in the order of the instructions they use, narrowest first
ORDER = ("SSE2", "SSE3", "SSSE3", "SSE4_1", "SSE4_2", "AVX", "AVX2", "AVX512")


def capped(branch: str, cap: str) -> str | None:
    """The branch of :data:`ORDER` to pin where the CPU's is ``branch`` and ``MKL_ENABLE_INSTRUCTIONS``
    is ``cap`` (oneMKL's names, any case): the narrower of the two; ``AVX2_E1`` caps at ``AVX2`` and
    ``AVX512``, ``AVX512_E1``..., ``AVX10``... do not cap below ``AVX512``, nor do the Xeon Phi caps
    ``AVX512_MIC``/``AVX512_MIC_E1`` of older MKL (on this Xeon oneMKL ran its AVX-512 path under
    them, and ``MKL_CBWR=AVX512`` held: ``mkl_cbwr_get`` said ``AVX512``; unpinned it said ``OFF``).
    None for a cap of another name (no branch known to match it)."""
    cap = cap.strip().upper()
    if cap.startswith("AVX10") or cap.startswith("AVX512"):
        cap = "AVX512"
    elif cap == "AVX2_E1":
        cap = "AVX2"
    if cap not in ORDER or branch not in ORDER:
        return None
    return min(branch, cap, key=ORDER.index)


def fix_branch(
    environ: MutableMapping[str, str] | None = None, cpu: tuple[str, frozenset[str]] | None = None
) -> str | None:
    """Set ``MKL_CBWR`` in ``environ`` (default ``os.environ``) to :func:`branch_for` the CPU
    (``cpu``: vendor and flags, default :func:`cpu_info`) unless it is set already. Returns the value
    in effect (None: unset, no branch for this CPU).

    A user who holds oneMKL below the CPU's branch (``MKL_ENABLE_INSTRUCTIONS=AVX2`` on an AVX-512
    CPU) gets the matching branch (:func:`capped`: ``AVX2``), not the CPU's: oneMKL obeys the cap
    first, finds the ``AVX512`` branch forbidden and runs ``AUTO`` (measured here: ``mkl_cbwr_get``
    answers ``AUTO``), i.e. CNR without a fixed path, the per-process choice this module exists to
    remove; and a Ray worker, given the driver's ``MKL_CBWR`` but not its cap, would run ``AVX512``
    bits. ``MKL_CBWR=AVX2`` is the path the cap allows, pinned, and the same bits in every process
    and worker of an AVX2 or wider CPU (quickstart's ``metrics.jsonl`` is ``04142a56…`` with the cap
    alone, the cap and ``AVX2``, or ``AVX2`` alone). A cap of a name without a known branch leaves
    ``MKL_CBWR`` unset with one warning line (set it yourself for bit-reproducible runs)."""
    env = os.environ if environ is None else environ
    if ENV in env:
        return env[ENV]
    branch = branch_for(*(cpu_info() if cpu is None else cpu))
    if branch is not None and env.get(INSTRUCTIONS, "").strip():
        cap = env[INSTRUCTIONS]
        branch = capped(branch, cap)
        if branch is None:
            import warnings

            warnings.warn(f"{INSTRUCTIONS}={cap}: no oneMKL branch known to match it, so {ENV} is left unset and "
                          f"oneMKL picks its path in each process; set {ENV} (e.g. {ENV}=AVX2) for the same bits "
                          "in every process", RuntimeWarning, stacklevel=2)
    if branch is not None:
        env[ENV] = branch
    return branch


# oneMKL's codes of its CNR branches, as mkl_cbwr_get returns them (mkl_types.h, MKL_CBWR_*; 1,
# MKL_CBWR_BRANCH_OFF, is CNR off, what MKL_VERBOSE writes "CNR:OFF"), and its STRICT flag
CODES: dict[int, str] = {
    0: "UNSET", 1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 5: "SSE3", 6: "SSSE3", 7: "SSE4_1",
    8: "SSE4_2", 9: "AVX", 10: "AVX2", 11: "AVX512_MIC", 12: "AVX512", 13: "AVX512_MIC_E1", 14: "AVX512_E1",
}
STRICT = 0x10000
_CBWR_ALL = ~0  # mkl_cbwr_get's option: the branch and the STRICT flag
# the query's names: oneMKL's public one (a shared oneMKL), the one torch's static oneMKL exports
_GETTERS = ("mkl_cbwr_get", "mkl_serv_cbwr_get")


def branch_name(code: int) -> str:
    """oneMKL's name of a :data:`CODES` value (``AVX512``; ``AVX2,STRICT`` with the strict flag;
    ``code N`` for one this table lacks, a newer oneMKL's)."""
    name = CODES.get(code & ~STRICT, f"code {code & ~STRICT}")
    return f"{name},STRICT" if code & STRICT else name


@functools.cache
def _getter() -> Any:
    """oneMKL's ``mkl_cbwr_get`` in the torch this process imported (its CPU library links oneMKL
    in); None where torch has no oneMKL or exports no such function."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    libs = sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*"))
    for lib in libs:
        try:
            handle = ctypes.CDLL(str(lib))  # loaded already by `import torch`: the same library
        except OSError:
            continue
        for name in _GETTERS:
            fn = getattr(handle, name, None)
            if fn is not None:
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                return fn
    return None


def current() -> str | None:
    """The CNR branch oneMKL runs with in this process, as oneMKL itself reports it
    (``mkl_cbwr_get``: :func:`branch_name` of its answer, e.g. ``AVX512``, ``AVX2,STRICT``;
    ``AUTO`` where the branch ``MKL_CBWR`` names is not this CPU's or is no branch; ``OFF`` without
    CNR); None where torch has no oneMKL to ask. Asking reads ``MKL_CBWR`` as oneMKL's first call
    would (``MKL_VERBOSE`` then names the same ``CNR:`` branch), so it changes nothing."""
    fn = _getter()
    if fn is None:
        return None
    code = int(fn(_CBWR_ALL))
    return None if code < 0 else branch_name(code)


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a Ray worker must run with to take the driver's branch: ``{"MKL_CBWR": value}``
    of ``environ`` (default ``os.environ``: the user's value, or the one :func:`fix_branch` set),
    ``{}`` where it is unset (then each worker's ``import fedsim`` picks its own CPU's)."""
    env = os.environ if environ is None else environ
    return {ENV: env[ENV]} if ENV in env else {}


def counted(branches: Iterable[str | None]) -> dict[str, int]:
    """How many processes run each branch (``none``: a process with no oneMKL to ask), sorted by name."""
    out: dict[str, int] = {}
    for b in branches:
        key = "none" if b is None else b
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def differing(driver: str | None, workers: Iterable[str | None], where: str = "Ray actors") -> str | None:
    """One warning line where a worker (``where``: a run's Ray actors, a sweep's Ray tasks) runs
    another oneMKL branch than the driver (:func:`current` in each), None where they all agree."""
    others = {k: n for k, n in counted(workers).items() if k != ("none" if driver is None else driver)}
    if not others:
        return None
    names = ", ".join(f"{k} ({n})" for k, n in others.items())
    return (f"oneMKL runs branch {driver or 'none'} in the driver but {names} in {where} (MKL_CBWR; a node "
            f"without the driver's branch runs AUTO): this run's bits may differ from an in-process run "
            "(docs/performance.md, \"oneMKL's branch on a cluster\")")
