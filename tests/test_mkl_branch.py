"""oneMKL's code path is fixed per CPU by ``import fedsim`` (fedsim.mkl_branch): without it MKL picks
one per process, and a process that got the AVX2 path on an AVX-512 machine wrote another
metrics.jsonl for the same seed (docs/performance.md, "Reproducible to the bit")."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from fedsim.mkl_branch import (
    ENV,
    INTEL,
    STRICT,
    branch_for,
    branch_name,
    cpu_info,
    current,
    differing,
    fix_branch,
    worker_env,
)

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


# ---------------------------------------------------------------- the branch each process runs, on Ray


def test_onemkls_branch_codes_are_named_as_its_log_names_them():
    assert branch_name(12) == "AVX512" and branch_name(10) == "AVX2" and branch_name(2) == "AUTO"
    assert branch_name(1) == "OFF"  # MKL_CBWR_BRANCH_OFF: CNR off, MKL_VERBOSE's "CNR:OFF"
    assert branch_name(10 | STRICT) == "AVX2,STRICT" and branch_name(99) == "code 99"


# (MKL_CBWR, MKL_ENABLE_INSTRUCTIONS) → what oneMKL runs; the last two: a value that is no branch,
# and a branch the CPU lacks (MKL_ENABLE_INSTRUCTIONS=AVX2 hides AVX-512): oneMKL's AUTO
CASES = [("AVX2", None), ("AVX2,STRICT", None), ("COMPATIBLE", None), ("no_such_branch", None), ("AVX512", "AVX2")]


@pytest.mark.skipif(not torch.backends.mkl.is_available() or BRANCH != "AVX512",
                    reason="needs torch built with oneMKL on a Linux Intel CPU with AVX-512")
def test_current_is_the_branch_mkls_own_log_names():
    """:func:`current` asks oneMKL (``mkl_cbwr_get``); MKL's log (``MKL_VERBOSE``) of the product that
    follows names the same branch, in each case a fresh process (MKL reads the variable once)."""
    code = ("import fedsim, torch; from fedsim.mkl_branch import current; print('CURRENT', current()); "
            "a = torch.ones(20, 30); (a @ a.T).sum().item()")
    for cbwr, enable in CASES:
        env = {k: v for k, v in os.environ.items() if k not in (ENV, "MKL_ENABLE_INSTRUCTIONS")}
        env |= {"MKL_VERBOSE": "1", ENV: cbwr} | ({"MKL_ENABLE_INSTRUCTIONS": enable} if enable else {})
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        now = next(line.split()[1] for line in out.splitlines() if line.startswith("CURRENT "))
        logged = {line.split("CNR:")[1].split()[0] for line in out.splitlines() if "GEMM" in line}
        assert logged == {now}, (cbwr, enable, now, out[-2000:])
        expected = {"no_such_branch": "AUTO", "AVX512": "AUTO"}.get(cbwr, cbwr)
        assert now == expected, (cbwr, enable, now)


def test_the_workers_get_the_drivers_value_or_nothing():
    assert worker_env({ENV: "AVX2,STRICT", "OTHER": "1"}) == {ENV: "AVX2,STRICT"}
    assert worker_env({}) == {}


def test_ray_actors_and_tasks_are_started_with_it(monkeypatch):
    """Every actor and task fedsim starts on Ray gets the driver's MKL_CBWR in its ``runtime_env``
    (a cluster started apart runs each node's own otherwise: tests/test_cluster.py)."""
    from fedsim import backend

    monkeypatch.setenv(ENV, "COMPATIBLE")
    assert backend.worker_options() == {"runtime_env": {"env_vars": {ENV: "COMPATIBLE"}}}
    calls = []

    class FakeRay:
        def remote(self, **options):
            calls.append(options)
            return lambda cls: type("Handle", (), {"remote": staticmethod(lambda *a: "actor")})

    rb = backend.RayBackend.__new__(backend.RayBackend)
    rb.ray = FakeRay()
    assert rb.actor(object, num_cpus=2) == "actor"
    assert calls == [{"num_cpus": 2, "runtime_env": {"env_vars": {ENV: "COMPATIBLE"}}}]
    monkeypatch.delenv(ENV)
    assert backend.worker_options() == {}


def test_a_differing_branch_is_one_warning_line():
    assert differing("AVX512", ["AVX512", "AVX512"]) is None
    assert differing(None, [None]) is None  # no oneMKL anywhere: nothing to compare
    line = differing("AVX512", ["AUTO", "AVX512", "AUTO", None])
    assert line is not None and "\n" not in line
    assert line.startswith("oneMKL runs branch AVX512 in the driver but AUTO (2), none (1) in Ray actors")
    assert "bits may differ from an in-process run" in line
    assert "in the sweep's Ray tasks" in differing("AVX2", ["AVX512"], "the sweep's Ray tasks")


def test_a_run_records_the_branches_once_and_warns_where_they_differ(tmp_path):
    from fedsim.runner import record_branches

    path = tmp_path / "versions.json"
    path.write_text(json.dumps({"torch": "x", "mkl_branch": "AVX512"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_branches(path, "AVX512", ["AVX512", "AVX512", "AVX512"])
    assert json.loads(path.read_text()) == {"torch": "x", "mkl_branch": "AVX512",
                                            "mkl_branch_ray_actors": {"AVX512": 3}}
    with pytest.warns(RuntimeWarning, match=r"^oneMKL runs branch AVX512 in the driver but AUTO \(1\) in Ray actors"):
        record_branches(path, "AVX512", ["AVX512", "AUTO"], resumed=True)  # a resume on other nodes
    recorded = json.loads(path.read_text())
    assert recorded["mkl_branch_ray_actors"] == {"AVX512": 3}  # the first start's, kept
    assert recorded["mkl_branch_resumes"] == [
        {"mkl_branch": "AVX512", "mkl_branch_ray_actors": {"AUTO": 1, "AVX512": 1}}]
    # an in-process resume whose driver runs another branch than the first start: recorded and warned
    with pytest.warns(RuntimeWarning, match=r"^this resume runs oneMKL branch AVX2 in the driver, the run's first"):
        record_branches(path, "AVX2", None, resumed=True)
    recorded = json.loads(path.read_text())
    assert recorded["mkl_branch"] == "AVX512" and recorded["mkl_branch_resumes"][-1] == {"mkl_branch": "AVX2"}


def test_record_branches_reads_versions_json_bounded(tmp_path, monkeypatch):
    """versions.json is read back through the bounded reader: a planted giant file is replaced, not read."""
    import fedsim._runs as runs_mod
    from fedsim.runner import record_branches

    monkeypatch.setattr(runs_mod, "MAX_JSON_BYTES", 1000)
    path = tmp_path / "versions.json"
    path.write_text(json.dumps({"pad": "x" * 5000}))
    record_branches(path, "AVX512", ["AVX512"])
    assert json.loads(path.read_text()) == {"mkl_branch": "AVX512", "mkl_branch_ray_actors": {"AVX512": 1}}


def test_an_in_process_run_records_the_drivers_branch(tmp_path, small_scenario):
    """versions.json names the branch the run's process ran (no Ray actors: none recorded)."""
    import fedsim

    fedsim.run(small_scenario(rounds=1), out=tmp_path / "out")
    recorded = json.loads((tmp_path / "out" / "versions.json").read_text())
    assert recorded.get("mkl_branch") == current() and "mkl_branch_ray_actors" not in recorded
    if torch.backends.mkl.is_available() and BRANCH is not None:
        assert current() == os.environ.get(ENV, BRANCH)


def test_a_continuation_is_recorded_beside_the_first_start_and_warns_where_it_differs(tmp_path):
    """Run.continue_without's branches (the federated-unlearning probe) go to their own list, through
    the same record_branches as a resume's."""
    from fedsim.runner import record_branches

    path = tmp_path / "versions.json"
    path.write_text(json.dumps({"mkl_branch": "AVX512"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_branches(path, "AVX512", None, continued=True)
        record_branches(path, "AVX512", ["AVX512"], continued=True)
    with pytest.warns(RuntimeWarning, match=r"^the probe's continuation of the run runs oneMKL branch AVX2"):
        record_branches(path, "AVX2", None, continued=True)
    assert json.loads(path.read_text()) == {"mkl_branch": "AVX512", "mkl_branch_continuations": [
        {"mkl_branch": "AVX512"}, {"mkl_branch": "AVX512", "mkl_branch_ray_actors": {"AVX512": 1}},
        {"mkl_branch": "AVX2"}]}
    # a continuation writing its own file (probes/versions.json) compares with the run's first start
    probes = tmp_path / "probes.json"
    with pytest.warns(RuntimeWarning, match=r"^the probe's continuation of the run runs oneMKL branch AVX2"):
        record_branches(probes, "AVX2", None, continued=True, first_from=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record_branches(probes, "AVX512", None, continued=True, first_from=path)
    assert json.loads(probes.read_text()) == {"mkl_branch_continuations": [{"mkl_branch": "AVX2"},
                                                                          {"mkl_branch": "AVX512"}]}


def test_a_users_instruction_cap_picks_the_branch_it_allows():
    """MKL_ENABLE_INSTRUCTIONS=AVX2 on an AVX-512 CPU: MKL_CBWR=AVX2 (it was AVX512, a branch the cap
    forbids, so oneMKL ran AUTO); a cap at or above the CPU's branch changes nothing; an unknown cap
    leaves MKL_CBWR unset with one warning line; the user's own MKL_CBWR still wins."""
    cpu = (INTEL, AVX512 | AVX2)
    for cap, want in [("AVX2", "AVX2"), ("avx2", "AVX2"), ("AVX2_E1", "AVX2"), ("AVX", "AVX"), ("SSE4_2", "SSE4_2"),
                      ("AVX512", "AVX512"), ("AVX512_E1", "AVX512"), ("AVX10", "AVX512"), ("", "AVX512"),
                      ("AVX512_MIC", "AVX512"), ("avx512_mic_e1", "AVX512")]:  # older MKL's Xeon Phi caps
        env = {"MKL_ENABLE_INSTRUCTIONS": cap}
        assert fix_branch(env, cpu) == want and env[ENV] == want, cap
    env = {"MKL_ENABLE_INSTRUCTIONS": "AVX512"}
    assert fix_branch(env, (INTEL, AVX2)) == "AVX2"  # the CPU's branch is the narrower
    env = {"MKL_ENABLE_INSTRUCTIONS": "NEON"}
    with pytest.warns(RuntimeWarning, match=r"^MKL_ENABLE_INSTRUCTIONS=NEON: no oneMKL branch known") as w:
        assert fix_branch(env, cpu) is None
    assert ENV not in env and len(w) == 1 and "\n" not in str(w[0].message)
    user = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", ENV: "AVX512"}
    assert fix_branch(user, cpu) == "AVX512"


@pytest.mark.skipif(not torch.backends.mkl.is_available() or BRANCH != "AVX512",
                    reason="needs torch built with oneMKL on a Linux Intel CPU with AVX-512")
def test_import_under_an_avx2_cap_runs_onemkls_avx2_branch():
    """In a process started with MKL_ENABLE_INSTRUCTIONS=AVX2, ``import fedsim`` sets MKL_CBWR=AVX2
    and oneMKL reports that branch (with MKL_CBWR=AVX512 it reported AUTO)."""
    code = ("import os, fedsim, torch; from fedsim.mkl_branch import current; a = torch.ones(20, 30); "
            "(a @ a.T).sum().item(); print(os.environ['MKL_CBWR'], current())")
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["AVX2", "AVX2"], out.stdout + out.stderr
