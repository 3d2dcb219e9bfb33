"""A Ray that fedsim starts itself is lean (issue 19: the 10,000-peer run's memory): no prestarted
idle workers, and the head processes fedsim does not use stopped; a cluster address, or
``FEDSIM_RAY_LEAN=0``, gets none of it."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest

from fedsim import backend, ray_lean, ray_leftovers, ray_reaper


def _ray_commands() -> list[str]:
    """The command lines of this process's descendants (the session's Ray: daemons and workers)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append(" ".join(p.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


def test_fedsims_own_ray_runs_none_of_the_stopped_daemons(ray_session) -> None:
    cmds = _ray_commands()
    assert any("raylet" in c for c in cmds) and any("gcs_server" in c for c in cmds)  # control: Ray seen
    for script in ("autoscaler/_private/monitor.py", "dashboard/dashboard.py", "_private/log_monitor.py"):
        assert not [c for c in cmds if script in c], script  # the conftest's Ray: log_to_driver=False
    node = ray_session._private.worker._global_node
    assert not {"monitor", "dashboard", "log_monitor"} & set(node.all_processes)  # shutdown skips them


def test_fedsims_own_ray_prestarts_no_workers(ray_session) -> None:
    """The raylet runs with the options that stop prestarting (read back from Ray's GCS)."""
    from ray._private.state import state

    cfg = state.get_system_config()
    assert cfg.get("enable_worker_prestart") is False and cfg.get("prestart_worker_first_driver") is False


class _FakeRay:
    """Stands in for ``ray`` in :func:`fedsim.backend.init_ray`: records ``ray.init``'s arguments."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import ray

        self.calls: list[dict[str, Any]] = []
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        self.stopped: list[list[str]] = []
        monkeypatch.setattr(backend, "stop_daemons", lambda ray, kinds: self.stopped.append(kinds) or kinds)
        monkeypatch.setattr(backend, "cluster_address", lambda address: address)  # a live cluster, as given
        monkeypatch.setattr(ray_leftovers, "leftovers", lambda: None)  # this machine's other Rays are not the test's
        self.reaper: list[tuple[str, Any]] = []  # the calls to fedsim.ray_reaper, in order
        for verb in ("start", "watch", "stop"):
            monkeypatch.setattr(ray_reaper, verb, lambda *a, _v=verb, **kw: self.reaper.append((_v, a, kw)))
        monkeypatch.setattr(ray, "init", lambda **kw: self.calls.append(kw) or self.reaper.append(("ray.init",)))


def _unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for this test and restore them after (``delenv`` of an unset name would not
    undo what ``init_ray`` then sets)."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.mark.parametrize("value", ["false", "off", "no", "2", "0 1"])
def test_a_junk_lean_setting_is_a_one_line_error(monkeypatch, value) -> None:
    pytest.importorskip("ray")
    _unset(monkeypatch, "RAY_USAGE_STATS_ENABLED")
    monkeypatch.setenv(ray_lean.LEAN_ENV, value)
    fake = _FakeRay(monkeypatch)
    for address in (None, "127.0.0.1:6379"):
        with pytest.raises(backend.RayStartError, match=f"^FEDSIM_RAY_LEAN={value!r}: expected 0 .* or 1 ") as e:
            backend.init_ray(address, num_cpus=2)
        assert "\n" not in str(e.value)
    assert fake.calls == [] and "RAY_USAGE_STATS_ENABLED" not in os.environ


@pytest.mark.parametrize("value", ["", "1", " 1 "])
def test_lean_is_the_default_and_1(monkeypatch, value) -> None:
    pytest.importorskip("ray")
    _unset(monkeypatch, "RAY_USAGE_STATS_ENABLED")
    monkeypatch.setenv(ray_lean.LEAN_ENV, value)
    fake = _FakeRay(monkeypatch)
    assert backend.init_ray(num_cpus=2)
    assert fake.calls[0]["_system_config"] == ray_lean.lean_system_config()


@pytest.mark.parametrize("log_to_driver", [True, False])
def test_a_local_start_asks_for_a_lean_ray(monkeypatch, log_to_driver) -> None:
    pytest.importorskip("ray")
    _unset(monkeypatch, ray_lean.LEAN_ENV, "RAY_USAGE_STATS_ENABLED")
    fake = _FakeRay(monkeypatch)
    assert backend.init_ray(num_cpus=2, log_to_driver=log_to_driver)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert fake.calls[0]["_system_config"] == ray_lean.lean_system_config()
    assert fake.stopped == [ray_lean.lean_stopped_daemons(log_to_driver)]
    assert ("log_monitor" in fake.stopped[0]) is not log_to_driver  # the workers' output still reaches the driver


def test_a_cluster_address_and_lean_off_get_ray_as_it_comes(monkeypatch) -> None:
    pytest.importorskip("ray")
    _unset(monkeypatch, ray_lean.LEAN_ENV, "RAY_USAGE_STATS_ENABLED")
    fake = _FakeRay(monkeypatch)
    assert backend.init_ray("127.0.0.1:6379")
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ  # the cluster's settings are its own
    monkeypatch.setenv(ray_lean.LEAN_ENV, "0")
    assert backend.init_ray(num_cpus=2)
    assert len(fake.calls) == 2 and not any("_system_config" in kw for kw in fake.calls)
    assert fake.calls[0]["address"] == "127.0.0.1:6379" and fake.calls[1]["address"] == "local"
    assert fake.stopped == []


def _fake_shutdown(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import ray

    calls: list[int] = []
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(1))
    return calls


def test_shutdown_restores_the_environment(monkeypatch) -> None:
    """The usage-stats switch is set for the Ray fedsim starts and unset again when it stops, by
    both ways a run stops it (the backend's shutdown, the sweep's run_tasks)."""
    pytest.importorskip("ray")
    _unset(monkeypatch, ray_lean.LEAN_ENV, "RAY_USAGE_STATS_ENABLED")
    _FakeRay(monkeypatch)
    stops = _fake_shutdown(monkeypatch)
    b = backend.RayBackend(num_cpus=2)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # control: set while Ray runs
    b.shutdown()
    assert stops == [1] and "RAY_USAGE_STATS_ENABLED" not in os.environ
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1})
    monkeypatch.setattr(ray, "remote", lambda **kw: lambda fn: fn)
    backend.run_tasks(lambda: None, [], lambda *a: None, jobs=1)
    assert stops == [1, 1] and "RAY_USAGE_STATS_ENABLED" not in os.environ


def test_a_users_setting_survives_and_a_failed_start_leaves_nothing(monkeypatch) -> None:
    pytest.importorskip("ray")
    import ray

    _unset(monkeypatch, ray_lean.LEAN_ENV)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    _FakeRay(monkeypatch)
    _fake_shutdown(monkeypatch)
    assert backend.init_ray(num_cpus=2)
    backend.shutdown_ray(ray)
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "1"
    monkeypatch.delenv("RAY_USAGE_STATS_ENABLED")

    def boom(**kw: Any) -> None:
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"  # set for the start that fails
        raise RuntimeError("no")

    monkeypatch.setattr(ray, "init", boom)
    with pytest.raises(backend.RayStartError, match="could not start Ray on this machine: RuntimeError: no"):
        backend.init_ray(num_cpus=2)
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ


def test_only_a_ray_started_here_gets_a_reaper(monkeypatch) -> None:
    """A local start starts the reaper before ``ray.init`` (a kill during the start is covered), with
    Ray's temp folder; a clean shutdown ends it with nothing to reap; a failed start lets it reap;
    a cluster address gets none."""
    pytest.importorskip("ray")
    import ray

    _unset(monkeypatch, ray_lean.LEAN_ENV, "RAY_USAGE_STATS_ENABLED")
    fake = _FakeRay(monkeypatch)
    _fake_shutdown(monkeypatch)
    assert backend.init_ray(num_cpus=2)
    assert fake.reaper[0] == ("start", (fake.calls[0]["_temp_dir"],), {}) and fake.reaper[1] == ("ray.init",)
    fake.reaper.clear()
    backend.shutdown_ray(ray)
    assert fake.reaper == [("stop", (), {"clean": True})]
    fake.reaper.clear()
    assert backend.init_ray("127.0.0.1:6379")
    assert [c[0] for c in fake.reaper] == ["ray.init"]

    def boom(**kw: Any) -> None:
        raise RuntimeError("no")

    fake.reaper.clear()
    monkeypatch.setattr(ray, "init", boom)
    with pytest.raises(backend.RayStartError):
        backend.init_ray(num_cpus=2)
    assert fake.reaper[0][0] == "start" and fake.reaper[-1] == ("stop", (), {"clean": False})


def test_a_ctrl_c_python_drops_while_ray_starts_is_raised(monkeypatch) -> None:
    """A SIGINT during one of Ray's forks raises in the logging module's after-fork hook, where
    Python drops it; init_ray raises it when the start returns. The fake start drops one the same way."""
    pytest.importorskip("ray")
    import ray

    _unset(monkeypatch, ray_lean.LEAN_ENV, "RAY_USAGE_STATS_ENABLED")
    _FakeRay(monkeypatch)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert backend.init_ray(num_cpus=2)  # control: no Ctrl-C, no KeyboardInterrupt

        def init_dropping_ctrl_c(**kw: Any) -> None:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    time.sleep(0.001)
            except KeyboardInterrupt:
                pass  # "Exception ignored in: <function _releaseLock ...>"

        monkeypatch.setattr(ray, "init", init_dropping_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            backend.init_ray(num_cpus=2)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
