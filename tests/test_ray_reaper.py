"""The reaper of the Ray fedsim starts (:mod:`fedsim.ray_reaper`): when the driver dies without
stopping its Ray, what is left of that Ray session is killed, and nothing else.

The fast tests stand a small Python "driver" in for fedsim (no Ray): it starts the reaper, makes a
session folder and three children that sleep: an "agent" holding a log file open in that session
(Ray's agents outlive a killed driver by a minute), and two bystanders the reaper must not touch
(the same session but another Ray's folder; the right folder but another terminal session).
The ``slow`` tests kill a real ``fedsim run``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from fedsim import ray_reaper

REPO = Path(__file__).resolve().parents[1]

DRIVER = r"""
import os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from fedsim import ray_reaper

temp, mode = sys.argv[2], sys.argv[3]
ray_reaper.start(temp)
session = f"{temp}/session_2026-01-01_00-00-00_000000_{os.getpid()}"
other = f"{temp}/session_2026-01-01_00-00-00_000000_{os.getpid()}1"  # a pid suffix that starts the same
for d in (session, other):
    os.makedirs(f"{d}/logs")
if mode == "run":
    ray_reaper.watch(session)
hold = "import os, time; f = open(os.environ['HOLD'], 'a'); print(flush=True); time.sleep(600)"


def holder(path, **kw):  # the path only among its open files (a Ray agent's command line names no folder)
    return subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, env=dict(os.environ, HOLD=path), **kw)


agent = holder(f"{session}/logs/agent.log")
same_sid_other_folder = holder(f"{other}/logs/x.log")
other_sid = holder(f"{session}/logs/tail.log", start_new_session=True)
for p in (agent, same_sid_other_folder, other_sid):
    p.stdout.readline()  # its file is open
if mode == "clean":
    ray_reaper.stop(clean=True)
print(ray_reaper._reaper.pid if ray_reaper._reaper else 0, agent.pid, same_sid_other_folder.pid, other_sid.pid,
      flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _kill(pids: list[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _killed_driver(tmp_path: Path, mode: str) -> tuple[bool, bool, bool]:
    """Run the stand-in driver in ``mode``, SIGKILL it once its children run, let its reaper finish;
    whether the agent, the same-session bystander and the other-session bystander are alive."""
    temp = tmp_path / "ray"
    temp.mkdir()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(REPO), str(temp), mode], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        reaper, *children = (int(x) for x in driver.stdout.readline().split())
    except ValueError:
        driver.kill()
        raise AssertionError("the stand-in driver did not start") from None
    try:
        assert all(_alive(p) for p in children)  # control: all three run before the kill
        driver.kill()
        driver.wait()
        if reaper:
            assert _wait_gone([reaper], 30), "the reaper did not finish"
        return tuple(_alive(p) for p in children)  # type: ignore[return-value]
    finally:
        _kill(children)
        driver.kill()


pytestmark = pytest.mark.skipif(not ray_reaper.supported(), reason="the reaper reads Linux's /proc")


@pytest.mark.parametrize("mode", ["run", "startup"])
def test_a_killed_driver_leaves_no_process_of_its_ray_session(tmp_path, mode) -> None:
    """``run``: the reaper was told the session folder; ``startup``: killed before it was (Ray
    still starting), found by the ``session_*_<driver pid>`` name."""
    agent, same_sid_other_folder, other_sid = _killed_driver(tmp_path, mode)
    assert not agent
    assert same_sid_other_folder and other_sid  # another Ray's folder, another terminal session


def test_after_a_clean_stop_the_reaper_touches_nothing(tmp_path) -> None:
    """Also the control of the two tests above: without a reaper at work the agent outlives the driver."""
    assert _killed_driver(tmp_path, "clean") == (True, True, True)


def test_names_session() -> None:
    s = "/t/ray/session_2026_42"
    assert ray_reaper.names_session(f"--log_dir={s}/logs", [s], [], 42)
    assert ray_reaper.names_session(s, [s + "/"], [], 42)
    assert not ray_reaper.names_session("/t/ray/session_2026_421/logs/raylet.out", [s], [], 42)
    assert not ray_reaper.names_session("/t/ray/session_2026_7/logs/x", [s], ["/t/ray"], 7)  # known: exact only
    assert ray_reaper.names_session("--x=/t/ray/session_2026_42/sockets/raylet", [], ["/t/ray"], 42)
    assert not ray_reaper.names_session("/t/ray/session_2026_42/x", [], ["/t/ray"], 4)
    assert not ray_reaper.names_session("/t/ray/session_2026_142/x", [], ["/t/ray"], 42)
    assert not ray_reaper.names_session("/u/ray/session_2026_42/x", [], ["/t/ray"], 42)
    assert ray_reaper.names_session("/a /t/ray/session_1_9 /t/ray/session_2_42/x", [], ["/t/ray"], 42)


def test_start_is_a_no_op_where_unsupported(monkeypatch) -> None:
    monkeypatch.setattr(ray_reaper, "supported", lambda: False)
    ray_reaper.start("/nonexistent")
    assert ray_reaper._reaper is None
    ray_reaper.watch("/nonexistent/session_1")  # nothing to tell, no error
    ray_reaper.stop()


def test_a_reaper_that_cannot_start_is_a_warning_not_an_error(monkeypatch) -> None:
    def no_process(*a, **kw):
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(ray_reaper.subprocess, "Popen", no_process)
    with pytest.warns(RuntimeWarning, match=r"^could not start the reaper of fedsim's Ray \(Resource temporarily"):
        ray_reaper.start("/nonexistent")
    assert ray_reaper._reaper is None


# --- a real fedsim run on Ray -------------------------------------------------------------------


def _session_processes(sid: int) -> list[str]:
    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(" ".join(p.cmdline()) or p.name())
        except (OSError, psutil.Error):
            pass
    return out


def _fedsim_run(tmp: str, rounds: int) -> subprocess.Popen:
    """``fedsim run`` of the quickstart in its own session (so its Ray is found by that session),
    with Ray's folder under ``tmp`` (short: Ray's socket paths must fit 107 bytes)."""
    env = dict(os.environ, TMPDIR=tmp, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "fedsim", "run", str(REPO / "scenarios/quickstart.yaml"), "-q", "--overwrite"]
    cmd += ["--set", f"rounds={rounds}", "--out", f"{tmp}/run"]
    return subprocess.Popen(
        cmd, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal would start it
    )


def _until(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def short_tmp():
    pytest.importorskip("ray")
    d = tempfile.mkdtemp(prefix="fr", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
def test_a_killed_fedsim_run_leaves_no_ray_process(short_tmp) -> None:
    """Without the reaper Ray's agents outlive the killed driver by ~60 s (the GCS call they wait
    out); 40 s is the bound."""
    run = _fedsim_run(short_tmp, rounds=100000)
    try:
        kinds = ("ray::PeerGroup", "DashboardAgent", "RuntimeEnvAgent")  # control: the agents run before the kill
        assert _until(lambda: all(any(k in c for c in _session_processes(run.pid)) for k in kinds), 240)
        run.kill()
        run.wait()
        assert _until(lambda: not _session_processes(run.pid), 40), _session_processes(run.pid)
    finally:
        run.kill()


@pytest.mark.slow
def test_ctrl_c_during_rays_start_leaves_no_ray_process(short_tmp) -> None:
    run = _fedsim_run(short_tmp, rounds=20)
    try:
        assert _until(lambda: any("gcs_server" in c for c in _session_processes(run.pid)), 240)
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        assert run.wait(timeout=240) in (0, 130)
        assert _until(lambda: not _session_processes(run.pid), 40), _session_processes(run.pid)
    finally:
        run.kill()
