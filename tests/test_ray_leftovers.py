"""Leftover Ray processes (:mod:`fedsim.ray_leftovers`): the processes of a session whose GCS and
raylet are gone are named with their memory; a session with a live GCS or raylet never is; fedsim
stops none of them.

Stand-in processes (no Ray), as tests/test_ray_reaper.py does: small Python sleepers whose command
lines look like Ray's (``exec -a`` sets a ``ray::...`` title or a ``gcs_server``/``raylet`` program
name; a ``monitor.py`` in a ``ray`` folder) and that name a session folder on their command line or
only through an open file (as Ray's agents do)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from fedsim import backend, ray_leftovers, ray_reaper

pytestmark = pytest.mark.skipif(not ray_reaper.supported(), reason="reads Linux's /proc")

SLEEP = (
    "import os, time; f = open(os.environ['HOLD'], 'a') if os.environ.get('HOLD') else None; "
    "print(flush=True); time.sleep(600)"
)


class Standins:
    """Starts stand-in processes and kills exactly them at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []
        self.script = tmp / "site" / "ray" / "autoscaler" / "monitor.py"
        self.script.parent.mkdir(parents=True)
        self.script.write_text(f"exec({SLEEP!r})\n")

    def session(self, n: int) -> Path:
        s = self.tmp / "ray" / f"session_2026-01-0{n}_00-00-00_000000_{n}"
        (s / "logs").mkdir(parents=True, exist_ok=True)
        return s

    def _start(self, argv: list[str], hold: Path | None = None) -> int:
        env = dict(os.environ, HOLD=str(hold) if hold else "")
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        self.procs.append(p)
        p.stdout.readline()  # running, its file open
        return p.pid

    def titled(self, title: str, *args: str, hold: Path | None = None) -> int:
        """A Python sleeper whose argv[0] is ``title`` (``ray::DashboardAgent``, ``/x/gcs_server``, ...)."""
        return self._start(["bash", "-c", 'exec -a "$0" "$@"', title, sys.executable, "-c", SLEEP, *args], hold)

    def monitor(self, session: Path) -> int:
        return self._start([sys.executable, str(self.script), f"--logs-dir={session}/logs"])

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture()
def standins(tmp_path):
    s = Standins(tmp_path)
    yield s
    s.stop()


def _ours(procs: list[ray_leftovers.RayProcess], pids: set[int]) -> list[ray_leftovers.RayProcess]:
    return [p for p in procs if p.pid in pids]


def test_only_the_sessions_without_gcs_and_raylet_are_stale(standins) -> None:
    dead, head, worker = standins.session(1), standins.session(2), standins.session(3)
    stale = {
        standins.monitor(dead),  # a ray start head's monitor, retrying its dead GCS
        standins.titled("ray::DashboardAgent", hold=dead / "logs" / "agent.log"),  # names it by an open file only
    }
    live = {
        standins.titled("/x/ray/core/src/ray/gcs/gcs_server", f"--log_dir={head}/logs"),
        standins.monitor(head),
        standins.titled("/x/raylet", f"--raylet_socket_name={worker}/sockets/raylet"),  # a worker node: no GCS here
        standins.titled("ray::IDLE", hold=worker / "logs" / "worker.out"),
    }
    bystander = standins.titled("tail", f"{dead}/logs/raylet.out")  # names the dead session, is not Ray
    procs = _ours(ray_leftovers.ray_processes(time.monotonic() + 10).procs, stale | live | {bystander})
    assert {p.pid for p in procs} == stale | live  # control: every Ray stand-in is seen, with its session
    assert all(p.rss > 0 for p in procs)
    found = ray_leftovers.stale_sessions(procs)
    assert {s: {p.pid for p in ps} for s, ps in found.items()} == {str(dead): stale}
    assert {p.name for p in found[str(dead)]} == {"autoscaler/monitor.py", "ray::DashboardAgent"}


def test_the_warning_names_each_process_its_memory_and_the_kill(standins) -> None:
    dead = standins.session(1)
    pids = [standins.monitor(dead), standins.titled("ray::RuntimeEnvAgent", hold=dead / "logs" / "a.log")]
    msg = ray_leftovers.leftovers(timeout=10, confirm=0.1)
    assert msg is not None and "\n" not in msg
    for pid in pids:
        assert f"(pid {pid}, " in msg
    assert f"{dead}: " in msg and " MB)" in msg
    assert set(msg.split("`kill -9 ")[1].split("`")[0].split()) >= {str(p) for p in pids}
    assert "fedsim leaves them" in msg


def test_a_session_whose_gcs_comes_back_between_the_scans_is_not_reported(standins, monkeypatch) -> None:
    """A session being started or stopped right now is seen twice, ``confirm`` s apart."""
    dead = standins.session(1)
    pid = standins.monitor(dead)
    real_sleep = time.sleep

    def gcs_starts(seconds: float) -> None:
        standins.titled("/x/gcs_server", f"--log_dir={dead}/logs")
        real_sleep(seconds)

    monkeypatch.setattr(ray_leftovers.time, "sleep", gcs_starts)
    msg = ray_leftovers.leftovers(timeout=10, confirm=0.1)
    assert msg is None or f"(pid {pid}, " not in msg


def test_a_process_gone_by_the_second_scan_is_not_reported(standins, monkeypatch) -> None:
    dead = standins.session(1)
    gone, stays = standins.monitor(dead), standins.titled("ray::DashboardAgent", hold=dead / "logs" / "a.log")
    real_sleep = time.sleep

    def exits(seconds: float) -> None:
        os.kill(gone, signal.SIGKILL)
        os.waitpid(gone, 0)
        real_sleep(seconds)

    monkeypatch.setattr(ray_leftovers.time, "sleep", exits)
    msg = ray_leftovers.leftovers(timeout=10, confirm=0.1)
    assert msg is not None and f"(pid {stays}, " in msg and f"(pid {gone}, " not in msg


def test_the_scan_stops_at_its_deadline(standins) -> None:
    pid = standins.monitor(standins.session(1))
    done = ray_leftovers.ray_processes(time.monotonic() + 10)
    assert done.complete and _ours(done.procs, {pid})  # control: found with time to look
    assert ray_leftovers.ray_processes(time.monotonic() - 1) == ray_leftovers.Scan([], complete=False)


def test_no_verdict_from_a_scan_stopped_at_its_deadline(standins, monkeypatch) -> None:
    """A live session whose agent is read slowly: the scan stopped before it reached the raylet,
    and the agent was reported stale with a `kill -9`. Now an unfinished scan reports nothing."""
    live = standins.session(1)
    agent = standins.titled("ray::DashboardAgent", hold=live / "logs" / "agent.log")
    raylet = standins.titled("/x/raylet", f"--raylet_socket_name={live}/sockets/raylet")
    listdir, cmdline = os.listdir, ray_reaper.cmdline
    monkeypatch.setattr(
        ray_leftovers.os, "listdir", lambda p: [str(agent), str(raylet)] if p == "/proc" else listdir(p)
    )

    def slow(pid: int) -> list[str]:  # a /proc read stalled on a loaded machine, on the agent only
        if pid == agent:
            time.sleep(0.3)
        return cmdline(pid)

    monkeypatch.setattr(ray_reaper, "cmdline", slow)
    scan = ray_leftovers.ray_processes(time.monotonic() + 0.1)
    assert not scan.complete and [p.pid for p in scan.procs] == [agent]  # the raylet was not reached
    assert ray_leftovers.stale_sessions(scan.procs)  # control: judged on what it found, the agent looks stale
    assert ray_leftovers.leftovers(timeout=0.1, confirm=0.01) is None
    assert ray_leftovers.leftovers(timeout=10, confirm=0.01) is None  # control: with time, the raylet is seen
    p = next(p for p in standins.procs if p.pid == raylet)
    p.kill()
    p.wait()
    assert f"(pid {agent}, " in (ray_leftovers.leftovers(timeout=10, confirm=0.01) or "")  # control: now stale


def test_leftovers_are_left_running(standins) -> None:
    pid = standins.monitor(standins.session(1))
    assert ray_leftovers.leftovers(timeout=10, confirm=0.1) is not None
    assert Path(f"/proc/{pid}").exists() and standins.procs[0].poll() is None


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["ray::DashboardAgent"], "ray::DashboardAgent"),
        (["ray::IDLE is idle"], "ray::IDLE"),
        (["/v/ray/core/src/ray/raylet/raylet", "--x"], "raylet"),
        (["/v/bin/python3", "-u", "/v/site-packages/ray/_private/log_monitor.py"], "_private/log_monitor.py"),
        (["/v/bin/python", "-m", "ray.util.client.server", "--address=h:1"], "ray.util.client.server"),
        (["tail", "-f", "/tmp/ray/session_latest/logs/raylet.out"], None),
        (["/v/bin/python", "-m", "fedsim", "run", "x.yaml"], None),
        (["/v/bin/python", "/home/me/rayleigh/ray.py"], None),
        ([], None),
    ],
)
def test_ray_name(argv, name) -> None:
    assert ray_leftovers.ray_name(argv) == name


def test_session_of() -> None:
    s = "/tmp/ray/session_2026-12-05_15-39-21_530670_8090"
    assert ray_leftovers.session_of(["--x", f"--logs-dir={s}/logs"]) == s
    assert ray_leftovers.session_of([f"{s}"]) == s
    assert ray_leftovers.session_of(["/tmp/ray/session_latest/logs/x", f"{s}/sockets/raylet"]) == s
    assert ray_leftovers.session_of([f"{s}x/logs", "/tmp/ray/session_2026-12-05/logs"]) is None


def test_init_ray_warns_of_leftovers_before_it_starts(monkeypatch) -> None:
    pytest.importorskip("ray")
    from test_ray_lean import _FakeRay, _unset

    _unset(monkeypatch, "RAY_USAGE_STATS_ENABLED")
    fake = _FakeRay(monkeypatch)
    monkeypatch.setattr(ray_leftovers, "leftovers", lambda: fake.reaper.append(("scan",)) or "3 processes of ...")
    with pytest.warns(RuntimeWarning, match=r"^3 processes of \.\.\.$"):
        assert backend.init_ray(num_cpus=2)
    assert [c[0] for c in fake.reaper][:3] == ["scan", "start", "ray.init"]
    ray_reaper.stop()
    monkeypatch.setattr(ray_leftovers, "leftovers", lambda: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.init_ray("127.0.0.1:6379")  # control: nothing left, no warning


@pytest.mark.parametrize("slow_scan", [1, 2])
def test_both_scans_must_finish_for_a_verdict(standins, monkeypatch, slow_scan) -> None:
    """Between the two scans the session's raylet stops (scan 1 slow: it saw only the agent) or
    starts (scan 2 slow: it never reaches the new raylet); the unfinished scan's half of the
    evidence is missing, so nothing is reported (either check removed reports the agent)."""
    live = standins.session(1)
    agent = standins.titled("ray::DashboardAgent", hold=live / "logs" / "agent.log")
    raylet = standins.titled("/x/raylet", f"--raylet_socket_name={live}/sockets/raylet") if slow_scan == 1 else None
    pids = [agent] if raylet is None else [agent, raylet]
    listdir, cmdline, real_sleep = os.listdir, ray_reaper.cmdline, time.sleep
    monkeypatch.setattr(ray_leftovers.os, "listdir", lambda p: [str(q) for q in pids] if p == "/proc" else listdir(p))
    scans = []

    def between(seconds: float) -> None:  # the confirm pause: the raylet stops, or one starts
        if raylet is not None:
            p = next(p for p in standins.procs if p.pid == raylet)
            p.kill()
            p.wait()
            pids.remove(raylet)
        else:
            pids.append(standins.titled("/x/raylet", f"--raylet_socket_name={live}/sockets/raylet"))
        real_sleep(seconds)

    def slow(pid: int) -> list[str]:
        if pid == agent:
            scans.append(pid)
            if len(scans) == slow_scan:
                real_sleep(0.5)
        return cmdline(pid)

    monkeypatch.setattr(ray_leftovers.time, "sleep", between)
    monkeypatch.setattr(ray_reaper, "cmdline", slow)
    assert ray_leftovers.leftovers(timeout=0.2, confirm=0.01) is None
    assert len(scans) == slow_scan  # the slow scan ran (scan 1 unfinished: no second scan)
