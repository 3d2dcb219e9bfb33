"""oneMKL's code path is fixed per CPU by ``import fedsim`` (fedsim.mkl_branch): without it MKL picks
one per process, and a process that got the AVX2 path on an AVX-512 machine wrote another
metrics.jsonl for the same seed (docs/performance.md, "Reproducible to the bit")."""

import os
import subprocess
import sys

import pytest
import torch

from fedsim.mkl_branch import ENV, INTEL, branch_for, cpu_info, fix_branch

AVX512 = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
AVX2 = frozenset({"avx2", "fma"})


def test_the_widest_branch_whose_flags_an_intel_cpu_has():
    assert branch_for(INTEL, AVX512 | AVX2 | {"sse4_2"}) == "AVX512"
    assert branch_for(INTEL, AVX2 | {"avx512f"}) == "AVX2"  # AVX-512 foundation alone is not MKL's AVX512
    assert branch_for(INTEL, AVX512 - {"avx512vl"} | AVX2) == "AVX2"
    assert branch_for(INTEL, frozenset({"avx2"})) is None  # AVX2 without FMA
    assert branch_for(INTEL, frozenset()) is None
    assert branch_for("AuthenticAMD", AVX512 | AVX2) is None  # another vendor: MKL's own choice


def test_cpu_info_is_the_first_cpus(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: X\nflags\t\t: fpu avx2 fma\n\n"
                    "processor\t: 1\nvendor_id\t: Other\nflags\t\t: fpu\n")
    assert cpu_info(str(info)) == (INTEL, frozenset({"fpu", "avx2", "fma"}))
    assert cpu_info(str(tmp_path / "absent")) == ("", frozenset())  # not Linux: nothing known, nothing set


def test_fix_branch_sets_it_once_and_a_users_value_wins():
    env: dict[str, str] = {}
    assert fix_branch(env, (INTEL, AVX512 | AVX2)) == "AVX512" and env == {ENV: "AVX512"}
    assert fix_branch(env, (INTEL, AVX2)) == "AVX512"  # set already: kept
    user = {ENV: "COMPATIBLE"}
    assert fix_branch(user, (INTEL, AVX512)) == "COMPATIBLE" and user == {ENV: "COMPATIBLE"}
    bare: dict[str, str] = {}
    assert fix_branch(bare, (INTEL, frozenset({"sse2"}))) is None and bare == {}


BRANCH = branch_for(*cpu_info())


@pytest.mark.skipif(not torch.backends.mkl.is_available() or BRANCH is None,
                    reason="needs torch built with oneMKL on a Linux Intel CPU with AVX2 or AVX-512")
@pytest.mark.parametrize("first", ["import fedsim, torch", "import torch, fedsim"])
def test_import_puts_mkl_in_cnr_mode_on_the_cpus_branch_before_its_first_call(first):
    """MKL's own log of a product (``MKL_VERBOSE``) names its CNR branch: the CPU's, not ``OFF``
    (MKL's per-process choice); also where torch is imported first (the benchmarks do)."""
    code = f"{first}; a = torch.ones(20, 30); print((a @ a.T).sum().item())"
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "MKL_ENABLE_INSTRUCTIONS")} | {"MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    calls = [line for line in out.splitlines() if "GEMM" in line]
    assert calls and all(f"CNR:{BRANCH} " in line for line in calls), out[-2000:]
    assert out.splitlines()[-1] == str(20 * 20 * 30.0)
