"""The Flower bridge with real processes on 127.0.0.1: a SuperLink and SuperNodes started as
`flower-superlink` / `flower-supernode`, the app started with `flwr run`, 3 rounds of a fedsim
strategy, the server's accuracy compared with fedsim's own federated mode.

Parity tolerance: ACC_TOL on the test accuracy of every round. The bridge runs the very same
computation (zero initial head, every client every round, minibatches keyed by partition id,
optimizer state kept on the node), so in practice the numbers are identical.

Every process started here (and the ones Flower spawns below them) is stopped when the test
ends, passed or failed: LocalFederation's context manager, bounded timeouts throughout."""

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr")

from fedsim.flower.local import LocalFederation  # noqa: E402
from fedsim.flower.processes import LOOPBACK, _alive, descendants, flower_exe  # noqa: E402
from fedsim.flower.project import export_app  # noqa: E402
from fedsim.prepare import prepare  # noqa: E402
from fedsim.runner import Run  # noqa: E402
from fedsim.scenario import parse  # noqa: E402

pytestmark = pytest.mark.flower

ACC_TOL = 1e-4  # |accuracy(bridge) - accuracy(fedsim federated mode)| per round
RUN_TIMEOUT = 240.0

try:
    flower_exe("flower-superlink")
    flower_exe("flower-supernode")
    flower_exe("flwr")
except Exception as e:  # pragma: no cover
    pytest.skip(f"Flower executables not found: {e}", allow_module_level=True)


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("features"))


def _scenario(cache: str, out: Path, **over) -> dict:
    d = {
        "name": "loopback",
        "seed": 1,
        "mode": "federated",
        "rounds": 3,
        "dataset": {"name": "mnist10k"},
        "backbone": {"name": "fmnist_cnn", "cache_dir": cache},  # the frozen backbone of the Bristle setting
        "partition": {"kind": "dirichlet", "alpha": 1.0},
        "peers": {"count": 2},
        "strategy": {"name": "median"},
        "training": {"lr": 1.0, "momentum": 0.9, "batch_size": 32, "local_steps": 5},
        "engine": {"backend": "local"},
        "output": {"dir": str(out)},
    }
    for k, v in over.items():
        node = d
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return d


def _simulate(d: dict) -> list[dict]:
    r = Run(parse(d))
    r.create_dir(overwrite=True)
    r.execute()
    return [json.loads(x) for x in (r.dir / "metrics.jsonl").read_text().splitlines()]


def _all_pids(fed: LocalFederation) -> list[int]:
    return [p.pid for p in fed.procs.values()] + [c for p in fed.procs.values() for c in descendants(p.pid)]


def _assert_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)], "processes left behind"


def _bridge_metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _node_id(fed: LocalFederation, name: str) -> int:
    """The node id a SuperNode logged when it joined (``SuperNode ID: N``)."""
    import re

    found = re.findall(r"SuperNode ID: (\d+)", fed.log(name).read_text())
    assert found, f"no node id in {fed.log(name)}"
    return int(found[-1])


def _check_parity(sim: list[dict], br: list[dict]) -> None:
    assert [x["round"] for x in br] == [0, 1, 2]
    for a, b in zip(sim, br, strict=True):
        assert ("accuracy_mean" in a) == ("accuracy_mean" in b)  # evaluated on the same rounds
        if "accuracy_mean" in a:
            assert abs(b["accuracy_mean"] - a["accuracy_mean"]) <= ACC_TOL, (a, b)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    assert "accuracy_mean" in br[-1]


def _check_loopback_only(fed: LocalFederation) -> None:
    for name, p in fed.procs.items():
        args = list(p.args)
        assert args[args.index("--host") + 1] == LOOPBACK, name
        if name != "superlink":
            assert args[args.index("--superlink") + 1].startswith(f"{LOOPBACK}:")


def test_loopback_parity_with_federated_mode(tmp_path, feature_cache):
    """SuperLink + 2 SuperNodes (insecure, loopback), 3 rounds of the coordinate-wise median: the
    global accuracy after every round equals fedsim's federated mode within ACC_TOL."""
    d = _scenario(feature_cache, tmp_path / "runs")
    sim = _simulate(d)  # also fills the feature cache the devices read
    n = parse(d).peers.count
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    fed = LocalFederation(tmp_path / "fed", nodes, tls=False)
    with fed:
        _check_loopback_only(fed)
        status = fed.run(app, {"output-dir": str(out), "client-eval": False}, timeout=RUN_TIMEOUT)
        pids = _all_pids(fed)
    _assert_gone(pids)
    assert status == "finished:completed"
    br = _bridge_metrics(out)
    _check_parity(sim, br)
    assert all(x["received"] == n and x["rejected"] == [] for x in br)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy_mean"] == br[-1]["accuracy_mean"] > 0.5
    print(f"\nparity: bridge {[x['accuracy_mean'] for x in br]} vs fedsim {[x['accuracy_mean'] for x in sim]}")


def test_round_latency_one_message_per_device_per_round(tmp_path, feature_cache):
    """3 SuperNodes, each with one long-lived ClientApp worker (LocalFederation's default), 4 rounds
    with client evaluation (piggy-backed on the train message): timings.jsonl reports every
    round's seconds; each SuperNode received exactly one train message per round and one evaluate
    message (after the last round), all run by its single worker process, which imported this
    checkout's fedsim; no flwr-clientapp process was started; accuracy equals fedsim's."""
    import re

    import fedsim

    d = _scenario(feature_cache, tmp_path / "runs", rounds=4, **{"peers.count": 3})
    sim = _simulate(d)
    n = 3
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    fed = LocalFederation(tmp_path / "fed", [{"partition-id": i, "num-partitions": n} for i in range(n)], tls=False)
    with fed:
        status = fed.run(app, {"output-dir": str(out)}, timeout=RUN_TIMEOUT)
        pids = _all_pids(fed)
    _assert_gone(pids)
    assert status == "finished:completed"
    timings = [json.loads(x) for x in (out / "timings.jsonl").read_text().splitlines()]
    assert [t["round"] for t in timings] == [0, 1, 2, 3] and all(t["seconds"] > 0 for t in timings)
    br = _bridge_metrics(out)
    assert [x["round"] for x in br] == [0, 1, 2, 3]
    for a, b in zip(sim, br, strict=True):
        assert abs(b["accuracy_mean"] - a["accuracy_mean"]) <= ACC_TOL, (a, b)
        assert b["received"] == n and "client_val_accuracy" in b and b["eval_rejected"] == []
    for i in range(n):
        log = fed.log(f"supernode{i}").read_text()
        assert log.count("Receiving: train message") == 4, log[-3000:]
        assert log.count("Receiving: evaluate message") == 1, log[-3000:]
        workers = re.findall(r"fedsim worker: pid (\d+), fedsim from (\S+),", log)
        assert [w[1] for w in workers] == [fedsim.__file__], workers  # one worker, this checkout's fedsim
        assert log.count("fedsim worker: task") == 5
        assert "Start `flwr-clientapp` process" not in log
    print(f"\n3 SuperNodes, 4 rounds: seconds per round {[t['seconds'] for t in timings]}")


def test_loopback_tls_node_auth_and_a_rejected_client(tmp_path, feature_cache):
    """TLS (self-signed CA) + SuperNode authentication: 2 registered SuperNodes, one of them the
    scenario's Byzantine client sending NaN heads, plus an unregistered SuperNode that the
    SuperLink refuses. 3 rounds: the NaN update is rejected and logged each round, the others
    are aggregated, and the accuracy still equals fedsim's federated mode (whose server drops the
    same malformed message)."""
    # strategy.f = 0: the NaN head is rejected before the rule sees it, so the rule need not tolerate it
    d = _scenario(feature_cache, tmp_path / "runs", **{"peers.byzantine": 1, "peers.attack.name": "nan",
                                                      "strategy.f": 0, "evaluation.every": 3})
    sim = _simulate(d)
    sc = parse(d)
    byz = prepare(sc).info["byzantine_ids"]
    app = export_app(sc, tmp_path / "app")
    out = tmp_path / "bridge"
    nodes = [{"partition-id": i, "num-partitions": sc.peers.count} for i in range(sc.peers.count)]
    fed = LocalFederation(tmp_path / "fed", nodes, tls=True, auth=True, startup_timeout=30.0)
    with fed:
        intruder = fed.add_supernode({"partition-id": 0, "num-partitions": sc.peers.count}, register=False,
                                     max_wait_time=10.0)
        _check_loopback_only(fed)
        sl_args = fed.procs["superlink"].args
        assert "--enable-supernode-auth" in sl_args and "--ssl-certfile" in sl_args and "--insecure" not in sl_args
        status = fed.run(app, {"output-dir": str(out)}, timeout=RUN_TIMEOUT)
        pids = _all_pids(fed)
        intruder.wait(timeout=30)  # refused: it gives up (max-wait-time) instead of joining
    _assert_gone(pids)
    assert status == "finished:completed"
    assert intruder.returncode not in (0, None)
    assert "Failed to activate SuperNode" in fed.log("supernode2").read_text()
    br = _bridge_metrics(out)
    _check_parity(sim, br)
    for x in br:
        assert x["received"] == 2  # the intruder never took part
        assert [r["partition"] for r in x["rejected"]] == byz and "non-finite" in x["rejected"][0]["reason"]
    assert "client_val_accuracy" in br[-1] and "client_val_accuracy" not in br[0]  # devices evaluated (every: 3)
    assert "rejected the update of node" in fed.log("serverapp").read_text()
    print(f"\nTLS+auth: bridge {br[-1]['accuracy_mean']} vs fedsim {sim[-1]['accuracy_mean']} after 3 rounds")


def test_cleanup_after_a_failed_start(tmp_path, monkeypatch):
    """A federation whose start fails still stops what it had started."""
    import fedsim.flower.local as local

    def boom(*a, **k):
        raise local.FederationError("registration failed (simulated)")

    monkeypatch.setattr(local, "register_node", boom)
    fed = LocalFederation(tmp_path / "fed", [{"partition-id": 0, "num-partitions": 1}], tls=True, auth=True,
                          startup_timeout=30.0)
    with pytest.raises(local.FederationError, match="simulated"):
        fed.start()
    assert fed.procs["superlink"].poll() is not None
    _assert_gone([fed.procs["superlink"].pid])


# ---------------------------------------------------------------------- deployment: PATH, closed control plane
BARE_PATH = "/usr/bin:/bin"  # no venv on PATH, as under systemd or cron


def _non_loopback_ip() -> str | None:
    """An address of this machine that is not loopback (the route to a TEST-NET address), or None."""
    import ipaddress
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # UDP: nothing is sent
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(ip).is_loopback or ip == "0.0.0.0" else ip


def _http_status(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=b"{}", headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_control_plane_closed_on_a_non_loopback_address(tmp_path):
    """A SuperLink listening on 0.0.0.0 (as `fedsim flower superlink` does for devices): from the
    machine's non-loopback address the Control API (`flwr ls`, register, run) and the Runtime API
    answer 403; from 127.0.0.1 `flwr ls` works; the Fleet API stays reachable from outside."""
    from fedsim.flower.control import flwr_cli
    from fedsim.flower.project import write_flwr_config

    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    fed = LocalFederation(tmp_path / "fed", [], tls=False, host="0.0.0.0", startup_timeout=30.0)
    with fed:
        home = write_flwr_config(tmp_path / "outside", f"{ip}:{fed.port}", insecure=True).parent
        outside = flwr_cli(["ls", "--format", "json"], home, timeout=60)
        inside = flwr_cli(["ls", "--format", "json"], fed.cli_home, timeout=60)
        control = _http_status(f"http://{ip}:{fed.port}/v1/control/list-runs")
        runtime = _http_status(f"http://{ip}:{fed.port}/v1/runtime/get-run")
        fleet = _http_status(f"http://{ip}:{fed.port}/v1/fleet/register-node")
    assert '"success": true' in inside.stdout, inside.stdout + inside.stderr
    assert '"success": true' not in outside.stdout, outside.stdout
    assert control[0] == 403 and "closed control plane" in control[1]
    assert runtime[0] == 403 and "closed control plane" in runtime[1]
    assert fleet[0] != 403 or "closed control plane" not in fleet[1]


def test_run_without_the_venv_on_path_and_a_node_dialling_the_outside_address(tmp_path, feature_cache):
    """PATH without the venv (systemd, cron): the SuperLink and SuperNode still find
    flower-superexec / flwr-serverapp / flwr-clientapp, and a SuperNode dialling the machine's
    non-loopback address (the Fleet API, open to devices) completes a 1-round run."""
    ip = _non_loopback_ip()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    d = _scenario(feature_cache, tmp_path / "runs", rounds=1, **{"peers.count": 1})
    _simulate(d)  # fills the feature cache the device reads
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    fed = LocalFederation(tmp_path / "fed", [], tls=False, host="0.0.0.0", env={"PATH": BARE_PATH},
                          startup_timeout=60.0)
    with fed:
        fed.add_supernode({"partition-id": 0, "num-partitions": 1}, superlink=f"{ip}:{fed.port}")
        status = fed.run(app, {"output-dir": str(out), "client-eval": False}, timeout=RUN_TIMEOUT)
    assert status == "finished:completed"
    br = _bridge_metrics(out)
    assert [x["round"] for x in br] == [0] and br[0]["received"] == 1 and "accuracy_mean" in br[0]


# ---------------------------------------------------------------------- limits
OVERSIZE_CLIENT = '''
"""fedsim's ClientApp, except that partition 1 answers with a 24 MB head (6 M float32), and
partition 0 answers only once the SuperLink has refused that head (its log says so; at most
REFUSAL_WAIT s): the ServerApp then holds the oversized reply's entry, whose objects never come,
before the honest reply exists — the order that lost the honest reply in CI."""
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.clientapp import ClientApp

from fedsim.flower import client as fc

SUPERLINK_LOG = Path("@SUPERLINK_LOG@")
REFUSAL_WAIT = 30.0

app = ClientApp()


def _refused() -> bool:
    try:
        return "fedsim: refused a reply from" in SUPERLINK_LOG.read_text(errors="replace")
    except OSError:
        return False


@app.train()
def train(msg, context):
    reply = fc.handle_train(msg, context)
    if int(context.node_config["partition-id"]) == 1:
        reply.content["arrays"] = ArrayRecord({"head": Array(np.ones(6_000_000, np.float32))})
    else:
        deadline = time.monotonic() + REFUSAL_WAIT
        while not _refused() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the ServerApp's next pull (every poll-interval) sees the refused reply's entry first
    return reply


@app.evaluate()
def evaluate(msg, context):
    return fc.handle_evaluate(msg, context)
'''


def _with_client_app(app: Path, module: str, source: str) -> None:
    """Make the exported app's ClientApp ``module:app``, shipped in the app bundle itself."""
    (app / f"{module}.py").write_text(source)
    text = (app / "pyproject.toml").read_text()
    assert 'clientapp = "fedsim.flower.client_app:app"' in text
    (app / "pyproject.toml").write_text(text.replace('clientapp = "fedsim.flower.client_app:app"',
                                                     f'clientapp = "{module}:app"'))


@pytest.mark.slow
def test_oversized_reply_refused_by_the_superlink(tmp_path, feature_cache):
    """A device answering with a 24 MB head (the SuperLink's cap: 2 MB): its pushes get 413 before
    Flower parses or stores them, so the ServerApp never deserialises the head (no 'shape'
    rejection: its objects never come, and at the round's deadline Flower reports them unavailable,
    attributed to that device's node) and the round completes with the honest device — whose reply
    is sent only after the refused one is at the SuperLink (the order that lost it in CI: the
    ServerApp sat in one pull for the refused reply's objects until their push session expired,
    180 s, past the 45 s deadline, and never pulled again)."""
    d = _scenario(feature_cache, tmp_path / "runs", rounds=1)
    _simulate(d)
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    fed = LocalFederation(tmp_path / "fed", nodes, tls=False, max_reply_bytes=2_000_000)
    _with_client_app(app, "oversize_client", OVERSIZE_CLIENT.replace("@SUPERLINK_LOG@", str(fed.log("superlink"))))
    with fed:
        status = fed.run(app, {"output-dir": str(out), "client-eval": False, "round-timeout": 45.0},
                         timeout=RUN_TIMEOUT)
    assert status == "finished:completed"
    br = _bridge_metrics(out)
    assert br[0]["received"] == 1 and br[0]["dropped"] == 1, br[0]
    assert [r["partition"] for r in br[0]["rejected"]] == [None], br[0]  # never read: no partition, no shape
    assert "objects are unavailable" in br[0]["rejected"][0]["reason"]
    assert br[0]["rejected"][0]["node"] == _node_id(fed, "supernode1"), br[0]  # not 1, the SuperLink
    assert "fedsim: refused a reply from" in fed.log("superlink").read_text()


# ---------------------------------------------------------------------- identity
def test_impersonated_partition_ignored(tmp_path, feature_cache):
    """TLS + SuperNode auth, a partition map {node id of supernode0: 0, of supernode1: 1}, and a
    third *registered* device that also claims partition 0: its reply is ignored ("not in the
    partition map"), whatever order the replies arrive in, and the round equals fedsim's."""
    d = _scenario(feature_cache, tmp_path / "runs", rounds=1)
    sim = _simulate(d)
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    fed = LocalFederation(tmp_path / "fed", nodes, tls=True, auth=True, startup_timeout=30.0)
    with fed:
        fed.add_supernode({"partition-id": 0, "num-partitions": 2})  # registered, but not in the map
        pmap = tmp_path / "partition-map.json"
        pmap.write_text(json.dumps({str(fed.node_ids["supernode0"]): 0, str(fed.node_ids["supernode1"]): 1}))
        status = fed.run(app, {"output-dir": str(out), "client-eval": False, "partition-map": str(pmap),
                               "node-wait": 60.0}, timeout=RUN_TIMEOUT)
    assert status == "finished:completed"
    br = _bridge_metrics(out)
    intruder = fed.node_ids["supernode2"]
    assert br[0]["received"] == 3 and br[0]["dropped"] == 0, br[0]
    assert br[0]["rejected"] == [{"node": intruder, "partition": 0,
                                  "reason": f"node {intruder} is not in the partition map"}], br[0]
    assert br[0]["accuracy_mean"] == pytest.approx(sim[0]["accuracy_mean"], abs=ACC_TOL)


# ---------------------------------------------------------------------- a SuperLink restart and --resume
def test_superlink_killed_then_resume_matches_federated_mode(tmp_path, feature_cache):
    """4 rounds, a checkpoint after every round, momentum 0.9 (kept on the devices). The SuperLink
    (``--database``; and the ServerApp below it) is killed once the first checkpoint exists, started
    again on the same port; the SuperNodes carry on; the app is started again with resume=true and finishes.
    Every round's accuracy equals fedsim's federated mode, as an uninterrupted run's does."""
    from fedsim.flower.control import start_run

    d = _scenario(feature_cache, tmp_path / "runs", rounds=4, **{"checkpoint.every": 1})
    sim = _simulate(d)
    n = parse(d).peers.count
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    rc = {"output-dir": str(out), "client-eval": False}
    nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    # the SuperLink's state in SQLite: after the restart it still knows the SuperNodes (in memory it
    # would not: their requests get 401 and they stop)
    fed = LocalFederation(tmp_path / "fed", nodes, tls=False, startup_timeout=120.0, database="superlink.db")
    with fed:
        run_id = start_run(app, fed.cli_home, rc)
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "checkpoint.pt").exists(), "no checkpoint written"
        fed.restart_superlink()
        lines_at_kill = len((out / "metrics.jsonl").read_text().splitlines())
        assert lines_at_kill < 4 and not (out / "summary.json").exists()
        status = fed.run(app, rc | {"resume": True}, timeout=RUN_TIMEOUT)
        pids = _all_pids(fed)
    _assert_gone(pids)
    assert status == "finished:completed", run_id
    br = _bridge_metrics(out)
    assert [x["round"] for x in br] == [0, 1, 2, 3]
    for a, b in zip(sim, br, strict=True):
        assert abs(b["accuracy_mean"] - a["accuracy_mean"]) <= ACC_TOL, (a, b)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    assert (out / "final_global.pt").exists()
    print(f"\nresumed after {lines_at_kill} rounds: bridge {[x['accuracy_mean'] for x in br]} "
          f"vs fedsim {[x['accuracy_mean'] for x in sim]}")


# ---------------------------------------------------------------------- a killed device
@pytest.mark.slow
def test_killed_supernode_is_named_with_its_partition(tmp_path, feature_cache):
    """2 SuperNodes, 2 rounds; supernode1 (partition 1) and its ClientApp worker are SIGKILLed once
    round 0 is written. Its round-1 message is answered by the SuperLink (node unavailable, from
    node 1 — the SuperLink's own id — once the node misses its heartbeats); the round's rejected
    list names the killed node's id and partition 1, and the round completes with the other device."""
    import os
    import signal

    from fedsim.flower.control import start_run, wait_run

    d = _scenario(feature_cache, tmp_path / "runs", rounds=2)
    _simulate(d)
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    fed = LocalFederation(tmp_path / "fed", nodes, tls=False)
    with fed:
        run_id = start_run(app, fed.cli_home, {"output-dir": str(out), "client-eval": False,
                                                "round-timeout": 150.0})
        deadline = time.monotonic() + RUN_TIMEOUT
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
            assert time.monotonic() < deadline, "round 0 never finished"
            time.sleep(0.2)
        victim = fed.procs["supernode1"]
        fed.optional.add("supernode1")
        for pid in [victim.pid, *descendants(victim.pid)]:
            os.kill(pid, signal.SIGKILL)
        status = wait_run(run_id, fed.cli_home, RUN_TIMEOUT)
        fed.log("serverapp").write_text(_server_log(run_id, fed))
    assert status == "finished:completed"
    br = _bridge_metrics(out)
    assert [x["round"] for x in br] == [0, 1]
    assert br[0]["received"] == 2 and br[0]["rejected"] == [], br[0]
    lost = _node_id(fed, "supernode1")
    assert br[1]["received"] == 1 and br[1]["dropped"] == 1, br[1]
    assert [(r["node"], r["partition"]) for r in br[1]["rejected"]] == [(lost, 1)], br[1]
    assert br[1]["rejected"][0]["reason"].startswith("no reply: "), br[1]
    assert f"rejected the update of node {lost} (partition 1): no reply" in fed.log("serverapp").read_text()


def _server_log(run_id: str, fed: LocalFederation) -> str:
    from fedsim.flower.control import run_logs
    from fedsim.flower.processes import FederationError

    try:
        return run_logs(run_id, fed.cli_home)
    except FederationError:
        return ""


# ---------------------------------------------------------------------- the systemd unit: a killed node restarted
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # systemd's PATH for system services


class RestartAlways:
    """A stand-in for systemd running one ``Type=simple`` service, with exactly the semantics of
    ``Restart=always`` + ``RestartSec=S``: whenever the main process exits — any exit code, any
    signal — wait S seconds and start ExecStart again, until stopped. ``KillMode=control-group``
    (systemd's default) is approximated: once the main process is gone, what is left of that start
    (its process group, and every descendant seen while it ran) gets SIGTERM, then SIGKILL after 5 s
    (systemd: after ``TimeoutStopSec``, 90 s). Not modelled: the start rate limit (5 starts in 10 s,
    which RestartSec=10 never reaches), ``User=`` (the test runs as itself, with HOME set to a
    directory of its own), the journal (one log file, each start headed ``=== start N``)."""

    def __init__(self, argv: list[str], restart_sec: float, log: Path, env: dict[str, str], cwd: Path) -> None:
        import threading

        self.argv, self.restart_sec, self.log, self.env, self.cwd = argv, restart_sec, log, env, cwd
        self.starts: list[int] = []  # pid of every start
        self.exits: list[int | None] = []  # the main process's return code of every start (-9: SIGKILL)
        self.proc: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="restart-always", daemon=True)

    def start(self) -> "RestartAlways":
        self._thread.start()
        return self

    def _spawn(self) -> None:
        import subprocess

        with open(self.log, "ab") as fh:
            fh.write(f"=== start {len(self.starts)}\n".encode())
            fh.flush()
            self.proc = subprocess.Popen(self.argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        self.starts.append(self.proc.pid)

    def _kill_rest(self, pgid: int, seen: set[int]) -> None:
        import os
        import signal

        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            for p in [p for p in seen if _alive(p)]:  # descendants that left the process group
                try:
                    os.kill(p, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and any(_alive(p) for p in seen):
                time.sleep(0.1)
            if not any(_alive(p) for p in seen):
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._spawn()
            seen: set[int] = set()
            while self.proc.poll() is None:
                seen.update(descendants(self.proc.pid))
                if self._stop.wait(0.2):
                    return  # stop() ends this start
            self.exits.append(self.proc.returncode)
            self._kill_rest(self.proc.pid, seen)
            if self._stop.wait(self.restart_sec):
                return

    def stop(self) -> None:
        from fedsim.flower.processes import stop_tree

        self._stop.set()
        self._thread.join(timeout=15)
        if self.proc is not None:
            stop_tree(self.proc, timeout=5.0)


@pytest.mark.slow
def test_systemd_unit_restarts_a_killed_node(tmp_path, feature_cache):
    """The unit fedsim ships (fedsim/flower/fedsim-node.service, the one docs/flower.md shows) keeps a
    device in the federation: its ExecStart — the device's values put in, plus a free local port and
    the test's feature cache —, started with systemd's bare PATH by :class:`RestartAlways` (the
    unit's Restart= and RestartSec=; not systemd itself: it is not PID 1 here, `systemd-run` fails
    with "Failed to connect to bus"). TLS + SuperNode auth, as in the unit; 3 rounds, min-replies 2.
    Once round 0 is written the unit's main process (the SuperNode) is SIGKILLed: the supervisor
    starts it again from the unit's command (again, while the SuperLink still holds the killed node
    as online and refuses to activate it: "Failed to activate SuperNode"), the node rejoins under
    its registered node id, and the later rounds aggregate its partition again (received 2, nothing
    rejected); the round it was killed in has it either answered or listed under its node id and
    partition 1 (no quorum: the head is unchanged)."""
    import os
    import signal
    import sys

    from fedsim.flower.certs import make_node_keys
    from fedsim.flower.control import register_node, start_run, wait_run
    from fedsim.flower.processes import free_port
    from fedsim.flower.unit import parse_service, read_unit, replace_options

    svc = parse_service(read_unit())
    assert svc.restart == "always"
    d = _scenario(feature_cache, tmp_path / "runs", rounds=3)
    _simulate(d)  # fills the feature cache the devices read
    app = export_app(parse(d), tmp_path / "app")
    out = tmp_path / "bridge"
    home = tmp_path / "pi"
    home.mkdir()
    env = {"PATH": SYSTEMD_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    if os.environ.get("PYTHONPATH"):  # the fedsim under test, where it is not the installed one
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    fed = LocalFederation(tmp_path / "fed", [{"partition-id": 0, "num-partitions": 2}], tls=True, auth=True,
                          startup_timeout=60.0)
    with fed:
        key, pub = make_node_keys(fed.workdir / "keys", "unit-node")
        node = int(register_node(pub, fed.cli_home))
        assert fed.certs is not None
        argv = replace_options(svc.exec_start, {"--superlink": fed.address, "--partition-id": "1",
                                                "--num-partitions": "2", "--root-certificates": str(fed.certs["ca"]),
                                                "--auth-key": str(key)},
                               executable=str(Path(sys.executable).parent / "fedsim"))
        argv += ["--port", str(free_port()), "--cache-dir", feature_cache]
        unit = RestartAlways(argv, svc.restart_sec, fed.log("unit-node"), env, home).start()
        try:
            run_id = start_run(app, fed.cli_home, {"output-dir": str(out), "client-eval": False, "min-replies": 2,
                                                    "round-timeout": 120.0, "node-wait": 240.0})
            deadline = time.monotonic() + RUN_TIMEOUT
            while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
                assert time.monotonic() < deadline, "round 0 never finished"
                time.sleep(0.2)
            first = unit.proc
            killed = [first.pid, *descendants(first.pid)]  # the SuperNode and its ClientApp worker
            os.kill(first.pid, signal.SIGKILL)
            t_kill = time.monotonic()
            status = wait_run(run_id, fed.cli_home, 2 * RUN_TIMEOUT)
            took = time.monotonic() - t_kill
            fed.log("serverapp").write_text(_server_log(run_id, fed))
        finally:
            unit.stop()
    assert status == "finished:completed"
    assert unit.exits[0] == -signal.SIGKILL and len(unit.starts) >= 2, (unit.starts, unit.exits)
    assert not [p for p in killed if _alive(p)], "the killed start left processes behind"
    log = fed.log("unit-node").read_text()
    assert set(map(int, re.findall(r"SuperNode ID: (\d+)", log))) == {node}  # one node id, every start
    assert "Receiving: train message" in log.rsplit("=== start", 1)[1]  # the last start took part
    br = _bridge_metrics(out)
    assert [x["round"] for x in br] == [0, 1, 2]
    assert br[0]["received"] == 2 and br[0]["rejected"] == [], br[0]
    r1 = br[1]
    assert (r1["received"] == 2 and r1["rejected"] == []) or (
        r1["quorum"] is False and {(r["node"], r["partition"]) for r in r1["rejected"]} <= {(node, 1)}), r1
    assert br[2]["received"] == 2 and br[2]["rejected"] == [] and br[2]["quorum"] is True, br[2]
    print(f"\nunit restarted {len(unit.starts) - 1} times (exits {unit.exits}); run done {took:.0f} s after the "
          f"SIGKILL; round 1: received {r1['received']}, rejected {r1['rejected']}")


def test_plugin_rule_and_attack_packed_for_real_processes(tmp_path, feature_cache, monkeypatch):
    """A plugin rule and a plugin attack through real processes: the app records their sha256
    (export's record), the ServerApp process imports the recorded files, each SuperNode's worker its
    own copies (node config ``plugins``), nothing granted in those processes otherwise; every round's
    accuracy equals fedsim's federated mode with the plugins granted (fedsim run --plugin)."""
    import attacks
    import strategies
    from fedsim import plugins
    from fedsim.flower import plugpack

    monkeypatch.setattr(plugins, "_GRANTED", set())
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.setattr(plugins, "_COPY_SHA", {})
    tag = f"lb{abs(hash(str(tmp_path))) % 10**8}"
    src, dev = tmp_path / "server", tmp_path / "device"
    src.mkdir()
    dev.mkdir()
    rule, attack = src / "lb_rule.py", src / "lb_attack.py"
    rule.write_text(
        "import strategies\n\n\n"
        f"@strategies.register({tag + '_half'!r})\n"
        "class HalfMean(strategies.Strategy):\n"
        '    """Half-way from the mean to the first received vector."""\n\n'
        '    exchanges = "output_layer"\n\n'
        "    def __call__(self, own, received, ctx):\n"
        "        return 0.5 * received.mean(0) + 0.5 * received[0]\n"
    )
    attack.write_text(
        "import attacks\n\n\n"
        f"@attacks.register({tag + '_mirror'!r})\n"
        "class Mirror(attacks.UpdateForger):\n"
        '    """Its own head, reflected and halved."""\n\n'
        "    def forge(self, honest, own, ctx):\n"
        "        return -0.5 * own\n"
    )
    for f in (rule, attack):
        (dev / f.name).write_bytes(f.read_bytes())
    try:
        plugins.grant([str(rule), str(attack)])
        d = _scenario(feature_cache, tmp_path / "runs", **{
            "strategy.name": f"{tag}_half", "peers.count": 3, "peers.byzantine": 1,
            "peers.attack.name": f"{tag}_mirror", "plugins": [str(rule), str(attack)],
        })
        sim = _simulate(d)
        app = export_app(parse(d), tmp_path / "app", {plugpack.KEY: plugpack.record([str(rule), str(attack)])})
        out = tmp_path / "bridge"
        copies = f"{dev / rule.name}:{dev / attack.name}"
        nodes = [{"partition-id": i, "num-partitions": 3, plugpack.KEY: copies} for i in range(3)]
        with LocalFederation(tmp_path / "fed", nodes, tls=False) as fed:
            status = fed.run(app, {"output-dir": str(out), "client-eval": False}, timeout=RUN_TIMEOUT)
        assert status == "finished:completed"
        br = _bridge_metrics(out)
        _check_parity(sim, br)
        assert all(x["received"] == 3 and x["rejected"] == [] for x in br)
    finally:
        strategies.REGISTRY.pop(f"{tag}_half", None)
        attacks.REGISTRY.pop(f"{tag}_mirror", None)
