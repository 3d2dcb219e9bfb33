"""Start a SuperLink and SuperNodes as real processes on 127.0.0.1 (demo, tests), and the
``flwr``/``flower-*`` command lines the CLI wraps.

:class:`LocalFederation` always cleans up what it started — on exit, on error, on Ctrl-C —
including the processes Flower spawns detached from them (SuperExec, ServerApp, ClientApp),
found by walking the process tree, and with bounded timeouts everywhere. It binds to 127.0.0.1
(unless a test asks for the SuperLink's Fleet API on another address) and only to ports the OS
reported free. SuperLink and SuperNodes start through :mod:`fedsim.flower.launch`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.flower.launch import MAX_REPLY_OPTION, POLL_OPTION, WARM_OPTION, launch_command
from fedsim.flower.project import write_flwr_config

CONNECTION = "fedsim"
LOOPBACK = "127.0.0.1"


class FederationError(RuntimeError):
    """A process did not start, a run failed or timed out; the message names the log file."""


def flower_exe(name: str) -> str:
    """``flower-superlink``, ``flower-supernode``, ``flwr`` of this environment (next to python)."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if not found:
        raise FederationError(f"{name} not found: install Flower (`pip install -e \".[flower]\"` in the fedsim "
                              "checkout)")
    return found


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            what = " ".join(map(str, proc.args[:5]))
            raise FederationError(f"process {what} exited with {proc.returncode} before listening on {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FederationError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


# ---------------------------------------------------------------------- command lines
def superlink_command(*, host: str = "0.0.0.0", port: int = 8000, certs: dict[str, str | Path] | None = None,
                      insecure: bool = False, auth: bool = False, database: str | None = None,
                      max_reply_bytes: int | None = None) -> list[str]:
    """``flower-superlink`` for the bridge, started through :mod:`fedsim.flower.launch` (its own
    executables found without PATH; Control/Runtime APIs served to this machine only, Fleet API on
    ``host``): TLS (``certs`` = ca/cert/key paths) unless ``insecure``; ``auth`` enables SuperNode
    authentication (needs TLS). The app's code is fedsim's, installed beside Flower, so runtime
    dependency installation is off. ``max_reply_bytes``: the cap on one device reply (the
    launcher's default when None)."""
    if insecure == bool(certs):
        raise ValueError("give TLS certificates or insecure=True (for local tests only)")
    if auth and insecure:
        raise ValueError("SuperNode authentication needs TLS; drop --insecure")
    cmd = launch_command("superlink", ["--host", host, "--port", str(port),
                                       "--disable-runtime-dependency-installation"])
    if insecure:
        cmd.append("--insecure")
    else:
        assert certs is not None
        cmd += ["--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["cert"]),
                "--ssl-keyfile", str(certs["key"])]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    if max_reply_bytes is not None:
        if max_reply_bytes <= 0:
            raise ValueError(f"max_reply_bytes must be positive, got {max_reply_bytes}")
        cmd += [MAX_REPLY_OPTION, str(int(max_reply_bytes))]
    return cmd


def node_config_string(cfg: dict[str, Any]) -> str:
    """``{"partition-id": 0, "data-dir": "/d"}`` → ``partition-id=0 data-dir="/d"`` (TOML values)."""
    parts = []
    for k, v in cfg.items():
        if isinstance(v, bool):
            val = "true" if v else "false"
        elif isinstance(v, int | float):
            val = repr(v)
        else:
            s = str(v)
            if '"' in s or " " in s and "'" in s:
                raise ValueError(f"node config {k}: a value with quotes is not supported: {s!r}")
            val = json.dumps(s)
        parts.append(f"{k}={val}")
    return " ".join(parts)


def supernode_command(superlink: str, node_config: dict[str, Any], *, root_certificates: str | Path | None = None,
                      insecure: bool = False, private_key: str | Path | None = None, port: int | None = None,
                      host: str = LOOPBACK, max_retries: int | None = None,
                      max_wait_time: float | None = None, warm: bool = False,
                      poll_interval: float | None = None) -> list[str]:
    """``flower-supernode`` for one fedsim peer (through :mod:`fedsim.flower.launch`). ``port``: the
    node's local ClientApp API (each SuperNode on one machine needs its own); it stays on 127.0.0.1.
    ``warm``: one long-lived ClientApp process (:mod:`fedsim.flower.worker`) instead of one per
    message; ``poll_interval``: cap on the SuperNode's waits between polls (Flower's: 3 s)."""
    if insecure == bool(root_certificates):
        raise ValueError("give --root-certificates (the SuperLink's CA) or --insecure (local tests only)")
    if private_key and insecure:
        raise ValueError("SuperNode authentication needs TLS; drop --insecure")
    cmd = launch_command("supernode", ["--superlink", superlink, "--node-config", node_config_string(node_config),
                                       "--host", host])
    if port is not None:
        cmd += ["--port", str(port)]
    cmd += ["--insecure"] if insecure else ["--root-certificates", str(root_certificates)]
    if private_key:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        cmd += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    if warm:
        cmd.append(WARM_OPTION)
    if poll_interval is not None:
        cmd += [POLL_OPTION, str(poll_interval)]
    return cmd


# ---------------------------------------------------------------------- process trees
def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: only the processes we started ourselves
        return out
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(d.name))
    return out


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def stop_tree(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` and every process below it (collected first: Flower detaches its
    SuperExec/app processes into sessions of their own), then SIGKILL what is left after ``timeout``."""
    if proc.poll() is not None and not descendants(proc.pid):
        return
    pids = [proc.pid, *descendants(proc.pid)]
    for p in reversed(pids):
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()
        if not any(_alive(p) for p in pids):
            break
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


# ---------------------------------------------------------------------- flwr CLI
def flwr_cli(args: Sequence[str], flwr_home: str | Path, timeout: float = 120.0,
             cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    env = os.environ | {"FLWR_HOME": str(flwr_home), "NO_COLOR": "1", "TERM": "dumb"}
    try:
        return subprocess.run([flower_exe("flwr"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise FederationError(f"`flwr {' '.join(args)}` did not finish in {timeout:.0f} s") from e


def _json_out(cp: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    text = cp.stdout.strip()
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if cp.returncode != 0 or not data.get("success", False):
        raise FederationError(f"{what} failed (exit {cp.returncode}): {cp.stdout.strip()} {cp.stderr.strip()}"[-3000:])
    return data


def start_run(app_dir: str | Path, flwr_home: str | Path, run_config: dict[str, Any] | None = None,
              connection: str = CONNECTION) -> str:
    """``flwr run APP_DIR CONNECTION``; returns the run id."""
    args = ["run", str(Path(app_dir).resolve()), *([connection] if connection else []), "--format", "json"]
    if run_config:
        args += ["--run-config", node_config_string(run_config)]
    return str(_json_out(flwr_cli(args, flwr_home), "flwr run")["run-id"])


def run_status(run_id: str, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    args = ["ls", *([connection] if connection else []), "--run-id", run_id, "--format", "json"]
    data = _json_out(flwr_cli(args, flwr_home), "flwr ls")
    runs = data.get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def wait_run(run_id: str, flwr_home: str | Path, timeout: float, connection: str = CONNECTION,
             poll: float = 2.0) -> str:
    """Poll until the run is ``finished:*``; returns that status (raises after ``timeout``)."""
    deadline = time.monotonic() + timeout
    status = "unknown"
    while time.monotonic() < deadline:
        status = run_status(run_id, flwr_home, connection)
        if status.startswith("finished"):
            return status
        time.sleep(poll)
    raise FederationError(f"run {run_id} not finished after {timeout:.0f} s (last status {status!r})")


def run_logs(run_id: str, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    """The ServerApp's log of a run (``flwr log RUN_ID --show``)."""
    cp = flwr_cli(["log", run_id, *([connection] if connection else []), "--show"], flwr_home, timeout=60)
    return cp.stdout


def register_node(public_key: str | Path, flwr_home: str | Path, connection: str = CONNECTION) -> str:
    args = ["supernode", "register", str(public_key), *([connection] if connection else []), "--format", "json"]
    data = _json_out(flwr_cli(args, flwr_home), "flwr supernode register")
    return str(data.get("node-id"))


# ---------------------------------------------------------------------- a federation on loopback
@dataclass
class LocalFederation:
    """A SuperLink and one SuperNode per node config, as real processes on 127.0.0.1.

    ``tls`` makes self-signed certificates; ``auth`` (needs ``tls``) registers one key pair per
    SuperNode with ``flwr supernode register`` and starts the SuperLink with
    ``--enable-supernode-auth``. Use as a context manager: the processes are stopped on exit."""

    workdir: Path
    node_configs: list[dict[str, Any]]
    tls: bool = False
    auth: bool = False
    startup_timeout: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    host: str = LOOPBACK  # where the SuperLink's Fleet API listens (its Control/Runtime APIs answer this machine only)
    max_reply_bytes: int | None = None  # the SuperLink's cap on one reply (None: the launcher's default)
    database: str | None = None  # the SuperLink's SQLite state, relative to workdir (None: in memory)
    warm: bool = True  # one long-lived ClientApp process per SuperNode (fedsim.flower.worker)
    poll_interval: float | None = 0.2  # the SuperNodes' poll of the SuperLink on loopback (Flower's: 3 s)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)
    port: int = field(default=0, init=False)
    certs: dict[str, Path] | None = field(default=None, init=False)
    optional: set[str] = field(default_factory=set, init=False)  # processes allowed to exit (refused intruders)
    run_id: str | None = field(default=None, init=False)
    node_ids: dict[str, int] = field(default_factory=dict, init=False)  # registered SuperNode → its node id

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        if self.auth and not self.tls:
            raise ValueError("SuperNode authentication needs TLS")

    @property
    def cli_home(self) -> Path:
        return self.workdir / "flwr-cli"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def log(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, cmd: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        self.log(name).parent.mkdir(parents=True, exist_ok=True)
        # SuperExec polls for new ServerApp/ClientApp tasks every second by default; on loopback poll faster
        env = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"} | os.environ | self.env
        env |= {"FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        fh = open(self.log(name), "wb")  # noqa: SIM115 - closed when the process is stopped
        try:
            p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                 cwd=self.workdir, start_new_session=True)
        finally:
            fh.close()
        self.procs[name] = p
        return p

    def start(self) -> LocalFederation:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        if self.tls:
            from fedsim.flower.certs import make_certificates

            self.certs = make_certificates(self.workdir / "certs", (LOOPBACK, "localhost"))
            write_flwr_config(self.cli_home, self.address, root_certificates=str(self.certs["ca"]))
        else:
            write_flwr_config(self.cli_home, self.address, insecure=True)
        sl = self._spawn("superlink", superlink_command(host=self.host, port=self.port, certs=self.certs,
                                                         insecure=not self.tls, auth=self.auth,
                                                         max_reply_bytes=self.max_reply_bytes,
                                                         database=self.database),
                         self.workdir / "superlink-home")
        try:
            wait_port(LOOPBACK, self.port, self.startup_timeout, sl)
        except FederationError as e:
            raise FederationError(f"{e}; see {self.log('superlink')}") from None
        for nc in self.node_configs:
            self.add_supernode(nc)

    def add_supernode(self, node_config: dict[str, Any], *, register: bool = True,
                      max_wait_time: float | None = None, superlink: str | None = None) -> subprocess.Popen:
        """Start one more SuperNode. With ``auth`` it gets a fresh key pair, registered with the
        SuperLink unless ``register=False`` (an intruder the SuperLink must refuse). ``superlink``:
        the Fleet API address it dials (default :attr:`address`)."""
        i = sum(n.startswith("supernode") for n in self.procs)
        key = None
        if self.auth:
            from fedsim.flower.certs import make_node_keys

            key, pub = make_node_keys(self.workdir / "keys", f"node{i}")
            if register:
                self.node_ids[f"supernode{i}"] = int(register_node(pub, self.cli_home))
        ca = self.certs["ca"] if self.certs else None
        cmd = supernode_command(superlink or self.address, node_config, root_certificates=ca,
                                insecure=not self.tls, private_key=key, port=free_port(),
                                max_wait_time=self.startup_timeout if max_wait_time is None else max_wait_time,
                                warm=self.warm, poll_interval=self.poll_interval)
        if self.auth and not register:
            self.optional.add(f"supernode{i}")
        return self._spawn(f"supernode{i}", cmd, self.workdir / f"node{i}-home")

    def restart_superlink(self) -> None:
        """Kill the SuperLink and everything below it (SuperExec, ServerApp), as a crash would, and
        start it again with the same command on the same port (the old log kept as
        ``superlink-1.log``, ...). The SuperNodes reconnect by themselves."""
        old = self.procs.pop("superlink")
        stop_tree(old, timeout=5.0)
        i = 1
        while self.log(f"superlink-{i}").exists():
            i += 1
        self.log("superlink").rename(self.log(f"superlink-{i}"))
        sl = self._spawn("superlink", list(old.args), self.workdir / "superlink-home")
        try:
            wait_port(LOOPBACK, self.port, self.startup_timeout, sl)
        except FederationError as e:
            raise FederationError(f"{e}; see {self.log('superlink')}") from None

    def run(self, app_dir: str | Path, run_config: dict[str, Any] | None = None, timeout: float = 300.0) -> str:
        """Start the app on this federation and wait for it; returns the final status."""
        self.run_id = run_id = start_run(app_dir, self.cli_home, run_config)
        try:
            status = wait_run(run_id, self.cli_home, timeout)
        except FederationError as e:
            raise FederationError(f"{e}; logs in {self.log('superlink').parent}") from None
        finally:
            try:
                self.log("serverapp").write_text(run_logs(run_id, self.cli_home))
            except (FederationError, OSError):
                pass
        dead = [n for n, p in self.procs.items() if p.poll() is not None and n not in self.optional]
        if dead:
            raise FederationError(f"processes exited during the run: {dead}; logs in {self.log('superlink').parent}")
        return status

    def stop(self, timeout: float = 10.0) -> None:
        for name in sorted(self.procs, key=lambda n: n == "superlink"):  # SuperNodes first
            stop_tree(self.procs[name], timeout)

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
