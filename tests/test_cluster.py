"""A real two-node Ray cluster on this machine: `fedsim run --address` gives the same bytes.

Marked ``cluster`` (run with ``pytest -m cluster``). Starts a head node and a worker node with
``ray start ... --block`` (1 CPU each, own temp dirs and free ports, so it never touches another
Ray instance on the machine), runs a small decentralized scenario with ``engine.num_actors: 2``
through the CLI with ``--address 127.0.0.1:PORT``, checks from the GCS that the two ``PeerGroup``
actors ran on the two different nodes, and checks ``metrics.jsonl`` is byte-identical to the same
scenario run with ``engine.backend: local``; then once more through Ray Client
(``--address ray://127.0.0.1:PORT``) where grpcio is installed.

Teardown stops exactly what the test started: SIGTERM to the process groups of the two
``ray start --block`` commands (which stop their GCS, raylet, agents and workers), then SIGKILL
to any of their recorded descendants still alive. It deliberately does not call ``ray stop``,
which kills every Ray process of the user on the machine (other test sessions included).

Ray rewrites ``127.0.0.1`` to the host's own address (``services.resolve_ip_for_localhost``),
so the nodes advertise that address; every connection stays on this host.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent
NODE_TIMEOUT = 120  # seconds for both nodes to come up
RUN_TIMEOUT = 300  # seconds for one `fedsim run` (the Ray Client run may take two)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free, so two nodes (and other Ray instances) never clash."""
    out = []
    for flag in (
        "--node-manager-port",
        "--object-manager-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
    ):
        out += [flag, str(_free_port())]
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_DEDUP_LOGS="0", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _descendants(pid: int) -> list[int]:
    """All descendants of ``pid`` (from /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM the ``ray start --block`` process groups, then SIGKILL their leftover descendants."""
    descendants = [d for p in procs for d in _descendants(p.pid)]
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
    deadline = time.monotonic() + 15
    while descendants and time.monotonic() < deadline:
        descendants = [d for d in descendants if Path(f"/proc/{d}").exists() and not _zombie(d)]
        time.sleep(0.2)
    for d in descendants:
        try:
            os.kill(d, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def _wait_for_port(port: int, deadline: float, proc: subprocess.Popen, log: Path) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Ray head: nothing listens on port {port}:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)


@pytest.fixture()
def two_node_cluster():
    """``(GCS address, Ray Client address)`` of a running head + worker node (1 CPU each), as
    ``("127.0.0.1:PORT", "ray://127.0.0.1:PORT2")``; stopped afterwards."""
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc (Linux) to stop exactly the processes it started")
    tmp = Path(tempfile.mkdtemp(prefix="fsrc", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port, client_port = _free_port(), _free_port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats"]
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--ray-client-server-port={client_port}",
        f"--temp-dir={tmp / 'head'}",
        *common,
        *_node_ports(),
    ]
    worker = [
        str(BIN / "ray"),
        "start",
        f"--address=127.0.0.1:{port}",
        f"--temp-dir={tmp / 'worker'}",
        *common,
        *_node_ports(),
    ]
    procs: list[subprocess.Popen] = []
    try:
        with open(tmp / "head.log", "w") as log:
            procs.append(
                subprocess.Popen(head, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env())
            )
        deadline = time.monotonic() + NODE_TIMEOUT
        _wait_for_port(port, deadline, procs[0], tmp / "head.log")
        with open(tmp / "worker.log", "w") as log:
            procs.append(
                subprocess.Popen(worker, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=_env())
            )
        address = f"127.0.0.1:{port}"
        nodes = _query(address, "nodes", timeout=max(10.0, deadline - time.monotonic()))
        alive = [n for n in nodes if n["alive"]]
        assert len(alive) == 2, f"expected 2 alive nodes, got {nodes}\n{(tmp / 'worker.log').read_text()[-3000:]}"
        assert all(n["cpus"] == 1.0 for n in alive), nodes
        _wait_for_port(client_port, deadline, procs[0], tmp / "head.log")  # Ray Client server starts last
        yield address, f"ray://127.0.0.1:{client_port}"
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


_QUERY = r"""
import json, sys, time
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
if sys.argv[2] == "nodes":  # wait until both nodes have registered
    deadline = time.monotonic() + float(sys.argv[3])
    while sum(n["Alive"] for n in ray.nodes()) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    out = [{"id": n["NodeID"], "alive": n["Alive"], "cpus": n["Resources"].get("CPU")} for n in ray.nodes()]
else:  # the actors this cluster ever hosted, from the GCS actor table (no dashboard needed)
    from ray._private import state
    out = [{"cls": a["ActorClassName"], "node": a["Address"]["NodeID"]} for a in state.actors().values()]
print("RESULT " + json.dumps(out))
ray.shutdown()
"""


def _query(address: str, what: str, timeout: float = 60.0) -> list[dict]:
    r = subprocess.run(
        [sys.executable, "-c", _QUERY, address, what, str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 60,
        env=_env(),
    )
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, f"ray query {what} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT ") :])


def _fedsim_run(scenario: Path, out: Path, *extra: str, tries: int = 1) -> None:
    cmd = [str(BIN / "fedsim"), "run", str(scenario), "--out", str(out), "-q", "--overwrite", *extra]
    for attempt in range(tries):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT, env=_env())
        if r.returncode == 0 or attempt == tries - 1 or "Starting Ray client server failed" not in r.stderr:
            break
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_two_node_cluster_matches_local(two_node_cluster, small_scenario, tmp_path):
    address, client_address = two_node_cluster
    sc = small_scenario(**{"rounds": 5, "engine.num_actors": 2, "evaluation.every": 1})
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))

    _fedsim_run(path, tmp_path / "local", "--set", "engine.backend=local")
    _fedsim_run(path, tmp_path / "cluster", "--set", "engine.backend=ray", "--address", address)

    nodes = {n["id"] for n in _query(address, "nodes") if n["alive"]}
    groups = [a for a in _query(address, "actors") if a["cls"] == "PeerGroup"]
    assert len(groups) == 2, groups
    assert {a["node"] for a in groups} == nodes, f"PeerGroup actors {groups} not spread over nodes {nodes}"

    local = (tmp_path / "local" / "metrics.jsonl").read_bytes()
    cluster = (tmp_path / "cluster" / "metrics.jsonl").read_bytes()
    assert len(local.splitlines()) == 5
    assert cluster == local

    # the README's remote form, through Ray Client (needs grpcio: `pip install "ray[client]"`)
    if importlib.util.find_spec("grpc") is not None:
        # Ray 2.55's Ray Client proxy intermittently loses the server process it forks for a new
        # client ("SpecificServer startup failed", empty log; ~1 in 7 here): the client then
        # fails after 30 s with "Starting Ray client server failed". Retried, bounded.
        _fedsim_run(path, tmp_path / "client", "--set", "engine.backend=ray", "--address", client_address, tries=3)
        assert (tmp_path / "client" / "metrics.jsonl").read_bytes() == local


@pytest.fixture()
def one_node_head():
    """A ``ray start --head`` (1 CPU) whose temp dir is a private ``RAY_TMPDIR``, so that its
    ``ray_current_cluster`` is the one ``--address auto`` reads: ``(env with that RAY_TMPDIR, GCS
    address, the head's ``ray start --block`` process)``; stopped afterwards."""
    with _one_head({}) as head:
        yield head


@contextlib.contextmanager
def _one_head(node_env: dict[str, str]) -> Iterator[tuple[dict[str, str], str, subprocess.Popen]]:
    """:func:`one_node_head`'s head, its processes (and so its workers) run with ``node_env`` added."""
    if not Path("/proc").is_dir():
        pytest.skip("needs /proc (Linux) to stop exactly the processes it started")
    tmp = Path(tempfile.mkdtemp(prefix="fsst", dir="/tmp"))
    port = _free_port()
    env = dict(_env(), RAY_TMPDIR=str(tmp))
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false", "--num-cpus=1",
           "--node-ip-address=127.0.0.1", "--block", "--disable-usage-stats", *_node_ports()]  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        with open(tmp / "head.log", "w") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                          env=env | node_env))  # fmt: skip
        deadline = time.monotonic() + NODE_TIMEOUT
        _wait_for_port(port, deadline, procs[0], tmp / "head.log")
        while not (tmp / "ray" / "ray_current_cluster").exists():
            if time.monotonic() > deadline:
                pytest.fail(f"the head recorded no address:\n{(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield env, (tmp / "ray" / "ray_current_cluster").read_text().strip(), procs[0]
    finally:
        _stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_core(head: subprocess.Popen) -> tuple[list[str], list[int]]:
    """SIGKILL the head's GCS and raylet (its own descendants only): the session goes stale. Returns
    the kinds killed and the head's other descendants, which the raylet's death re-parents to init
    (its agents would outlive the test by a minute): the caller kills them when done."""
    killed, others = [], []
    for pid in _descendants(head.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.path.basename(argv[0].decode()) in ("gcs_server", "raylet"):
            os.kill(pid, signal.SIGKILL)
            killed.append(os.path.basename(argv[0].decode()))
        else:
            others.append(pid)
    return sorted(killed), others


def test_address_auto_runs_on_a_live_head_and_fails_fast_on_a_stale_one(one_node_head, small_scenario, tmp_path):
    """Live: ``--address auto`` finds the head ``ray start`` recorded and runs there. Stale (its GCS and
    raylet killed, as a crash leaves it): a one-line error within seconds naming the address, the file
    it was read from and the session folder, and no run folder (it was a > 200 s hang and a folder)."""
    env, gcs, head = one_node_head
    sc = small_scenario(**{"rounds": 2, "engine.num_actors": 1, "evaluation.every": 1})
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))
    cmd = [str(BIN / "fedsim"), "run", str(path), "-q", "--set", "engine.backend=ray", "--address"]

    live = subprocess.run([*cmd, "auto", "--out", str(tmp_path / "live")], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, env=env)  # fmt: skip
    assert live.returncode == 0, f"{live.stdout[-2000:]}\n{live.stderr[-3000:]}"
    assert len((tmp_path / "live" / "metrics.jsonl").read_text().splitlines()) == 2

    killed, others = _kill_core(head)
    try:
        assert killed == ["gcs_server", "raylet"]
        _stale_session_fails_fast(env, gcs, cmd, tmp_path)
    finally:
        for pid in others:  # the head's own processes, left by the raylet's death
            if not _zombie(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _stale_session_fails_fast(env: dict[str, str], gcs: str, cmd: list[str], tmp_path: Path) -> None:
    t = time.monotonic()
    stale = subprocess.run([*cmd, gcs, "--out", str(tmp_path / "stale")], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT, env=env)  # fmt: skip
    took = time.monotonic() - t
    lines = [x for x in stale.stderr.splitlines() if x.strip()]
    assert stale.returncode == 1 and len(lines) == 1, stale.stderr[-3000:]
    assert lines[0].startswith(f"Error: no live Ray cluster at {gcs}: connection refused; start one with `ray start")
    assert not (tmp_path / "stale").exists() and took < 60, took

    # --address auto: Ray prefers the one raylet running on this machine to the recorded address, and this
    # machine may run another Ray (the test session's, another user's): in-process, with Ray's scan of this
    # machine's raylets emptied, so the recorded address is what auto finds, as on a machine without them
    from click.testing import CliRunner
    from ray._private import services

    from fedsim.cli import main

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(services, "find_gcs_addresses", lambda: frozenset())
        mp.setenv("RAY_TMPDIR", env["RAY_TMPDIR"])
        mp.delenv("RAY_ADDRESS", raising=False)
        t = time.monotonic()
        r = CliRunner().invoke(main, [*cmd[1:], "auto", "--out", str(tmp_path / "auto")])
        took = time.monotonic() - t
    finally:
        mp.undo()
    address_file = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
    sessions = [p for p in address_file.parent.glob("session_2*") if not p.is_symlink()]
    assert r.exit_code == 1 and len(sessions) == 1, r.output
    assert r.output.strip() == (
        f"Error: no live Ray cluster at {gcs} (--address auto, recorded in {address_file} by the last "
        f"`ray start --head`, session folder {sessions[0]}): connection refused; start one with `ray start --head`, "
        "or drop --address (engine.address) to let fedsim start its own Ray"
    )
    assert not (tmp_path / "auto").exists() and took < 30, took


# ---------------------------------------------------------------- oneMKL's branch on a cluster started apart

NODE_MKL = {"MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
"""A node's own environment: a user's MKL_CBWR in the shell that ran `ray start`, and oneMKL kept to
AVX2 (``MKL_ENABLE_INSTRUCTIONS``), as on a node whose CPU lacks AVX-512."""
WARNED = "bits may differ from an in-process run"


def _driver_avx512() -> None:
    import torch

    from fedsim.mkl_branch import branch_for, cpu_info

    if not torch.backends.mkl.is_available() or branch_for(*cpu_info()) != "AVX512":
        pytest.skip("needs torch built with oneMKL on a Linux Intel CPU with AVX-512 (fedsim's choice: AVX512)")


def _fedsim(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    r = subprocess.run([str(BIN / "fedsim"), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, env=env)
    assert r.returncode == 0, f"fedsim {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_ray_actors_run_the_drivers_mkl_branch_on_a_cluster_started_apart(small_scenario, tmp_path):
    """Before, a cluster's workers ran their node's own branch (here AVX2) whatever the driver ran:
    a user's MKL_CBWR in the driver's shell did not reach them. Now the driver's (the user's, or
    fedsim's choice) goes to every actor (runtime_env): the run gives an in-process run's bits with
    that branch. Where a node's oneMKL lacks it, oneMKL runs AUTO: versions.json records the
    driver's branch and the actors', and the run warns once."""
    _driver_avx512()
    sc = small_scenario(**{"rounds": 2, "engine.num_actors": 1, "evaluation.every": 1})
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))
    with _one_head(NODE_MKL) as (env, gcs, _):
        driver = {k: v for k, v in env.items() if k not in NODE_MKL}
        run = ["run", str(path), "-q", "--overwrite", "--out"]
        on_ray = ["--set", "engine.backend=ray", "--address", gcs]
        user = _fedsim([*run, str(tmp_path / "user"), *on_ray], driver | {"MKL_CBWR": "COMPATIBLE"})
        chosen = _fedsim([*run, str(tmp_path / "chosen"), *on_ray], driver)
    _fedsim([*run, str(tmp_path / "local")], driver | {"MKL_CBWR": "COMPATIBLE"})  # in-process

    recorded = json.loads((tmp_path / "user" / "versions.json").read_text())
    assert (recorded["mkl_branch"], recorded["mkl_branch_ray_actors"]) == ("COMPATIBLE", {"COMPATIBLE": 1})
    assert WARNED not in user.stderr, user.stderr[-2000:]
    assert (tmp_path / "user" / "metrics.jsonl").read_bytes() == (tmp_path / "local" / "metrics.jsonl").read_bytes()
    assert json.loads((tmp_path / "local" / "versions.json").read_text())["mkl_branch"] == "COMPATIBLE"

    recorded = json.loads((tmp_path / "chosen" / "versions.json").read_text())
    assert (recorded["mkl_branch"], recorded["mkl_branch_ray_actors"]) == ("AVX512", {"AUTO": 1})
    warned = [line for line in chosen.stderr.splitlines() if WARNED in line]
    assert len(warned) == 1 and "oneMKL runs branch AVX512 in the driver but AUTO (1) in Ray actors" in warned[0]


def test_a_sweep_runs_on_the_cluster_its_scenario_names(small_scenario, tmp_path):
    """``engine: {backend: ray, address: X}`` in a sweep's scenario: the sweep's tasks run on X (it
    was refused). They ran there: each run's process recorded the node's oneMKL (AUTO, no AVX-512),
    where a Ray of the sweep's own would have run AVX512; the sweep warns once."""
    _driver_avx512()
    with _one_head(NODE_MKL) as (env, gcs, _):
        sc = small_scenario(**{"rounds": 1, "engine.num_actors": 1, "engine.backend": "ray", "engine.address": gcs})
        path = tmp_path / "scenario.yaml"
        path.write_text(yaml.safe_dump(sc))
        driver = {k: v for k, v in env.items() if k not in NODE_MKL}
        r = _fedsim(["sweep", str(path), "-g", "seed=0,1", "-j", "1", "-q", "--out", str(tmp_path / "sw")], driver)
    runs = sorted(d for d in (tmp_path / "sw").iterdir() if d.is_dir())
    assert [d.name for d in runs] == ["seed=0", "seed=1"]
    for d in runs:
        assert (d / "summary.json").exists() and json.loads((d / "versions.json").read_text())["mkl_branch"] == "AUTO"
    warned = [line for line in r.stderr.splitlines() if WARNED in line]
    assert len(warned) == 1 and "AVX512 in the driver but AUTO (2) in the sweep's Ray tasks" in warned[0], r.stderr
