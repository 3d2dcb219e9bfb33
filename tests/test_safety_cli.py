"""The command line ends every failure in one line, and the Ray it starts is private to the user.

* Ctrl-C on a real ``fedsim run`` prints one line naming ``--resume``, exit 130 (no traceback).
* A :class:`~fedsim.errors.FedsimError` raised in any command prints ``Error: <message>``, exit 1.
* An unexpected exception prints one line naming a log file that holds the traceback.
* Disk full, a forbidden write and torch's failed write print one line naming the path.
* Ray started by fedsim listens on loopback only, keeps its session in a 0700 folder and uses
  token authentication; ``RAY_ADDRESS`` in the environment does not capture a sweep.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim.cli import main
from fedsim.errors import FedsimError, RunInterruptedError

ROOT = Path(__file__).resolve().parents[1]


MINE = ("from fedsim.probe_registry import Probe, register_probe\n\n\n"
        "@register_probe('safety_mine')\nclass Mine(Probe):\n    pass\n")  # a plugin registers something


@pytest.fixture(autouse=True)
def _forget_the_probe_kind():
    """The probe kind the small plugins here register, unregistered after each test."""
    yield
    from fedsim.probe_registry import REGISTRY

    REGISTRY.pop('safety_mine', None)


def _scenario(tmp_path: Path, **over) -> Path:
    d = {
        "name": "t",
        "seed": 3,
        "rounds": 3,
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")},
        "partition": {"kind": "dirichlet", "alpha": 1.0},
        "peers": {"count": 8},
        "topology": {"kind": "k_regular", "degree": 4},
        "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 1},
        "engine": {"backend": "local", "num_actors": 1},
        "output": {"dir": str(tmp_path / "runs")},
    } | over
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text[-3000:]}"
    assert "Traceback" not in text
    return lines[0]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"PYTHONPATH": str(ROOT)} | extra


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_on_a_real_run_prints_one_line_with_the_resume_command(tmp_path: Path) -> None:
    path = _scenario(tmp_path, name="sig", rounds=100000)
    metrics = tmp_path / "runs" / "sig" / "metrics.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", str(path), "-q"],
        cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 90
        while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 1):
            assert proc.poll() is None and time.time() < deadline, "the run ended or never wrote a round"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    line = _one_line(err)
    assert proc.returncode == 130, err
    assert f"fedsim run --resume {metrics.parent}" in line
    assert (metrics.parent / "checkpoint.pt").exists()


def test_ctrl_c_before_the_run_takes_over_sigint_is_one_line(tmp_path: Path, monkeypatch) -> None:
    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("fedsim.runner.Run.execute", interrupted)
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 130, res.output
    run = tmp_path / "runs" / "t"  # no checkpoint yet: the line does not promise one
    assert _one_line(res.stderr) == (f"Error: interrupted; the run can continue from round 0 (no checkpoint yet): "
                                     f"fedsim run --resume {run}")


def test_ctrl_c_after_a_checkpoint_names_it(tmp_path: Path, monkeypatch) -> None:
    def interrupted(self, *a, **k):
        (self.dir / "checkpoint.pt").write_bytes(b"")  # as a periodic checkpoint left it
        raise KeyboardInterrupt

    monkeypatch.setattr("fedsim.runner.Run.execute", interrupted)
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 130, res.output
    assert _one_line(res.stderr) == (f"Error: interrupted; the run can continue from its last checkpoint: "
                                     f"fedsim run --resume {tmp_path / 'runs' / 't'}")


def _resume_line_runs(line: str, tmp_path: Path, monkeypatch) -> None:
    """The command at the end of an interruption's line, pasted as it is in a new process (no
    plugin granted yet), finishes the run."""
    import shlex

    from fedsim import plugins

    command = shlex.split(line.split(": ", 2)[-1].split("with: ")[-1].removesuffix(" restarts it"))
    assert command[:3] == ["fedsim", "run", "--resume"], line
    monkeypatch.setattr(plugins, "_GRANTED", set())  # a new process: only what the command names
    monkeypatch.chdir(tmp_path.parent)  # pasted elsewhere than where the run began
    res = CliRunner().invoke(main, [*command[1:], "-q"])
    assert res.exit_code == 0, res.output
    assert (Path(command[3]) / "summary.json").exists()


def test_the_resume_command_of_an_interrupted_plugin_run_names_its_plugins(tmp_path: Path, monkeypatch) -> None:
    """A run made with --plugin, interrupted: the line's command names the plugin again (a resume
    without it is refused), so pasting it continues the run (before, it named only --resume)."""
    import shlex

    import fedsim
    from fedsim.callbacks import Stop

    plugin = tmp_path / "my plugin.py"  # a space: the command quotes it
    plugin.write_text(MINE)  # a probe kind no scenario here uses: the run records the plugin all the same
    monkeypatch.chdir(tmp_path)
    class StopAfterFirst:
        def on_round(self, record):
            return Stop("stopped", interrupt=True)

    with pytest.raises(RunInterruptedError) as e:
        fedsim.run(_scenario(tmp_path, checkpoint={"every": 1}), plugins=["my plugin.py"], out=tmp_path / "api",
                   callbacks=[StopAfterFirst()])
    assert f"--plugin '{plugin}'" in str(e.value)
    _resume_line_runs(str(e.value), tmp_path, monkeypatch)

    def interrupted(self, *a, **k):  # Ctrl-C before the run took over SIGINT: the CLI's own line
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr("fedsim.runner.Run.execute", interrupted)
        res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "--plugin", "my plugin.py", "-q",
                                        "--overwrite"])
    assert res.exit_code == 130, res.output
    command = _one_line(res.stderr).split("(no checkpoint yet): ")[-1]
    assert shlex.split(command) == ["fedsim", "run", "--resume", str(tmp_path / "runs" / "t"), "--plugin", str(plugin)]


def test_ctrl_c_in_any_other_command_is_one_line(monkeypatch) -> None:
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("strategies.available", interrupted)
    res = CliRunner().invoke(main, ["list", "strategies"])
    assert res.exit_code == 130, res.output
    assert _one_line(res.stderr) == "Error: interrupted"


def test_ctrl_c_in_a_sweep_is_an_error_line_like_a_runs(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C during a sweep: one ``Error:`` line on stderr naming what to do, exit 130, as fedsim
    run's (before: a line without the prefix, on stdout)."""
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("fedsim.sweep.execute_sweep", interrupted)
    res = CliRunner().invoke(main, ["sweep", str(_scenario(tmp_path)), "-g", "seed=0,1", "--local", "-q"])
    assert res.exit_code == 130, res.output
    assert _one_line(res.stderr) == ("Error: interrupted; complete runs are kept; continue with the same command "
                                     f"(→ {tmp_path / 'runs' / 't-sweep'})")


def test_a_dead_actor_is_one_line_with_exit_1(tmp_path: Path, monkeypatch) -> None:
    def died(self, *a, **k):
        self._interrupt.requested = False
        raise RunInterruptedError(f"a peer actor died (RayActorError); fedsim run --resume {self.dir} restarts it")

    monkeypatch.setattr("fedsim.runner.Run.execute", died)
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 1, res.output
    assert _one_line(res.stderr).startswith("Error: a peer actor died")


# --------------------------------------------------------------------------- expected failures
def _raise(exc: BaseException):
    def f(*a, **k):
        raise exc

    return f


COMMANDS = {  # command line, the function it calls that is made to fail
    "list": (lambda tmp: ["list", "strategies"], "strategies.available"),
    "run": (lambda tmp: ["run", str(_scenario(tmp)), "-q"], "fedsim.runner.Run.execute"),
    "sweep": (lambda tmp: ["sweep", str(_scenario(tmp)), "-g", "seed=0,1", "--local", "-q"], "fedsim.sweep.plan_sweep"),
    "report": (lambda tmp: ["report", str(tmp)], "fedsim.report.load_runs"),
    "plot": (lambda tmp: ["plot", str(tmp)], "fedsim.plot.load_runs"),
    "pretrain": (lambda tmp: ["pretrain", "--out", str(tmp / "w.pt")], "fedsim.models.pretrain.pretrain"),
    "flower": (
        lambda tmp: ["flower", "export", str(_scenario(tmp, mode="federated", topology={"kind": "star"})),
                     str(tmp / "app")],
        "fedsim.flower.project.export_app",
    ),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_fedsim_error_in_any_command_is_one_line(command: str, tmp_path: Path, monkeypatch) -> None:
    if command == "flower":
        pytest.importorskip("flwr")
    argv, target = COMMANDS[command]
    monkeypatch.setattr(target, _raise(FedsimError("data/x.npz: truncated\n(12 of 400 bytes)")))
    res = CliRunner().invoke(main, argv(tmp_path))
    assert res.exit_code == 1, res.output
    assert _one_line(res.stderr) == "Error: data/x.npz: truncated (12 of 400 bytes)"


@pytest.mark.parametrize("command", ["list", "run"])
def test_an_unexpected_error_is_one_line_naming_the_log_with_its_traceback(
    command: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    argv, target = COMMANDS[command]
    monkeypatch.setattr(target, _raise(RuntimeError("kaboom\nsecond line")))
    res = CliRunner().invoke(main, argv(tmp_path))
    assert res.exit_code == 1, res.output
    line = _one_line(res.stderr)
    assert line.startswith("fedsim: internal error: RuntimeError: kaboom second line; traceback written to ")
    log = Path(line.rsplit(" ", 1)[-1])
    if command == "run":  # the run directory's, as a sweep's failed runs have
        assert log == tmp_path / "runs" / "t" / "error.txt"
    else:
        assert log.parent == tmp_path / "cache-home" / "fedsim" / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: kaboom" in text


@pytest.mark.parametrize(
    "exc, expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "Error: disk full: no space left for {run}"),
        (OSError(errno.EDQUOT, "Quota exceeded", "/x/m.jsonl"), "Error: disk full: no space left for /x/m.jsonl"),
        (PermissionError(errno.EACCES, "Permission denied", "/ro/c"), "Error: cannot write /ro/c: Permission denied"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "Error: cannot write /ro/x: Read-only file system"),
        (
            RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                         "PytorchStreamWriter failed writing file data/0: file write failed"),
            "Error: could not write a file in {run}",
        ),
    ],
)
def test_a_failed_write_is_one_line_naming_the_path(exc, expected: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setattr("fedsim.runner.Run.execute", _raise(exc))
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 1, res.output
    line = _one_line(res.stderr)
    assert line.startswith(expected.format(run=tmp_path / "runs" / "t")), line
    assert not (tmp_path / "cache-home").exists()  # an expected failure writes no traceback log


def test_a_full_disk_on_a_plugin_run_names_the_plugin_in_its_resume_command(tmp_path: Path, monkeypatch) -> None:
    """The disk-full line's command, pasted, must resume: a run made with --plugin needs it named
    again (before: "continue with: fedsim run --resume DIR", refused for the missing plugin)."""
    plugin = tmp_path / "mine.py"
    plugin.write_text(MINE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("fedsim.runner.Run.execute", _raise(OSError(errno.ENOSPC, "No space left on device")))
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "--plugin", "mine.py", "-q"])
    assert res.exit_code == 1, res.output
    assert _one_line(res.stderr).endswith(
        f"; free some space, then continue with: fedsim run --resume {tmp_path / 'runs' / 't'} --plugin {plugin}")


# --------------------------------------------------------------------------- Ray
def test_the_private_ray_folder_is_0700_and_refuses_what_is_not_ours(tmp_path: Path) -> None:
    from fedsim.backend import RayStartError, private_ray_dir

    d = private_ray_dir(str(tmp_path))
    assert d == tmp_path / f"fedsim-ray-{os.getuid()}"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    d.chmod(0o777)  # as Ray leaves its folders
    assert stat.S_IMODE(private_ray_dir(str(tmp_path)).stat().st_mode) == 0o700
    other = tmp_path / "other"
    other.mkdir()
    d.rmdir()
    d.symlink_to(other)  # planted by someone else to redirect Ray's sockets
    with pytest.raises(RayStartError, match="not a folder owned by you"):
        private_ray_dir(str(tmp_path))
    if os.getuid() == 0:
        d.unlink()
        d.mkdir()
        os.chown(d, 4242, 4242)
        with pytest.raises(RayStartError, match="not a folder owned by you"):
            private_ray_dir(str(tmp_path))


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_an_unreachable_cluster_address_is_one_line_at_once(command: str, tmp_path: Path) -> None:
    """Ray retries an unreachable cluster for minutes, logging each try; fedsim says so in one line."""
    pytest.importorskip("ray")
    path = _scenario(tmp_path, engine={"backend": "ray", "num_actors": 1})
    argv = ["run", str(path), "-q"] if command == "run" else ["sweep", str(path), "-g", "seed=0,1", "-q"]
    t0 = time.time()
    res = CliRunner().invoke(main, [*argv, "--address", "127.0.0.1:1"])
    assert res.exit_code == 1, res.output
    line = _one_line(res.stderr)
    assert line.startswith("Error: no live Ray cluster at ") and "127.0.0.1:1" in line, line
    assert line.endswith(
        "connection refused; start one with `ray start --head`, or drop --address (engine.address) "
        "to let fedsim start its own Ray"
    ), line
    assert time.time() - t0 < 30


_LISTENERS = r"""
import json, os, sys
import psutil
from fedsim.backend import make_backend

class Echo:
    def pid(self):
        return os.getpid()

backend = make_backend("ray", None, 1)
import ray
ray.get(backend.actor(Echo, num_cpus=1).pid.remote())
me = psutil.Process()
found, auth = [], {}
for p in [me, *me.children(recursive=True)]:
    try:
        found += [[p.name(), c.laddr.ip, c.laddr.port] for c in p.net_connections(kind="inet")
                  if c.status == psutil.CONN_LISTEN or (c.type == 2 and not c.raddr)]
        auth[p.name()] = p.environ().get("RAY_AUTH_MODE")
    except psutil.Error:
        pass
node = ray._private.worker._global_node
print(json.dumps({"listen": found, "auth": auth, "session": node.get_session_dir_path()}))
backend.shutdown()
"""


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip.startswith("::ffff:127.") or ip == "::1"


@pytest.mark.slow
def test_ray_started_by_fedsim_listens_on_loopback_only_with_a_private_session_and_a_token(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    res = subprocess.run(
        [sys.executable, "-c", _LISTENERS], cwd=tmp_path, env=_env(RAY_ADDRESS="bogus.invalid:6379"),
        capture_output=True, text=True, timeout=240,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    names = {n for n, _, _ in out["listen"]}
    assert {"gcs_server", "raylet"} <= names, out  # the servers were found (the check is not vacuous)
    exposed = [x for x in out["listen"] if not _loopback(x[1])]
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"
    session = Path(out["session"])
    private = session.parents[1]
    assert private.name == f"fedsim-ray-{os.getuid()}", session
    st = private.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert out["auth"]["gcs_server"] == "token" and out["auth"]["raylet"] == "token", out["auth"]


@pytest.mark.slow
def test_ray_address_in_the_environment_does_not_capture_a_sweep(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    path = _scenario(tmp_path, rounds=2)
    res = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "sweep", str(path), "-g", "seed=0,1", "-j", "1", "-q"],
        cwd=tmp_path, env=_env(RAY_ADDRESS="bogus.invalid:6379"), capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "2 ran" in res.stdout
    sweep_dir = tmp_path / "runs" / "t-sweep"
    assert len(list(sweep_dir.glob("*/summary.json"))) == 2



class _RemoteError(Exception):
    """What Ray raises in the driver for an exception in an actor: its message is the remote
    traceback; the exception itself is ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::PeerGroup.aggregate() (pid=1, ip=127.0.0.1) ^^^^^^ File \"gossip.py\", line 240")
        self.cause = cause


@pytest.mark.parametrize(
    "cause, expected",
    [
        (RuntimeError("my rule broke"), "fedsim: internal error: RuntimeError (in a Ray actor): my rule broke; "),
        (FedsimError("data/x.npz: truncated"), "Error: data/x.npz: truncated"),
    ],
)
def test_an_error_in_a_ray_actor_is_reported_by_its_cause(cause, expected, tmp_path: Path, monkeypatch) -> None:
    def remote_failure(self, *a, **k):
        raise _RemoteError(cause)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    monkeypatch.setattr("fedsim.runner.Run.execute", remote_failure)
    res = CliRunner().invoke(main, ["run", str(_scenario(tmp_path)), "-q"])
    assert res.exit_code == 1, res.output
    assert _one_line(res.stderr).startswith(expected), res.stderr
