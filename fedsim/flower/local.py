"""Start a SuperLink and SuperNodes as real processes on 127.0.0.1 (demo, tests).

:class:`LocalFederation` always cleans up what it started — on exit, on error, on Ctrl-C —
including the processes Flower spawns detached from them (SuperExec, ServerApp, ClientApp),
found by walking the process tree, and with bounded timeouts everywhere. It binds to 127.0.0.1
(unless a test asks for the SuperLink's Fleet API on another address) and only to ports the OS
reported free. SuperLink and SuperNodes start through :mod:`fedsim.flower.launch`, with the
command lines of :mod:`fedsim.flower.commands`; the processes are :mod:`fedsim.flower.processes`,
the ``flwr`` CLI calls (run, status, log, registration) :mod:`fedsim.flower.control`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.flower.commands import superlink_command, supernode_command
from fedsim.flower.control import register_node, run_logs, start_run, wait_run
from fedsim.flower.processes import LOOPBACK, FederationError, free_port, stop_tree, wait_port
from fedsim.flower.project import write_flwr_config


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
