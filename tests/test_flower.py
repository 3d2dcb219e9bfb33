"""The Flower bridge without processes: the client's imports, parity of the bridge's computation
with fedsim's federated mode (ServerApp and ClientApps run in-process on Flower's own Message and
Context objects), rejection of malformed updates, the exported app, and the CLI's command lines.

The loopback tests with real SuperLink/SuperNode processes are in test_flower_loopback.py."""

import json
import logging
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("flwr")

from click.testing import CliRunner  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict  # noqa: E402,E501
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from fedsim.flower import common  # noqa: E402
from fedsim.flower.client import FedsimPeer, device_code  # noqa: E402
from fedsim.flower.inprocess import run_in_process  # noqa: E402
from fedsim.prepare import prepare  # noqa: E402
from fedsim.runner import Run  # noqa: E402
from fedsim.scenario import parse  # noqa: E402
from fedsim.simulation import PHASES  # noqa: E402


@pytest.fixture()
def fed_scenario(small_scenario):
    """A small federated scenario (sklearn digits, identity backbone), as a dict."""

    def make(**over):
        return small_scenario(**{"mode": "federated", "rounds": 3, "topology.kind": "star", "peers.count": 5} | over)

    return make


def _metrics(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _both(d, tmp_path, side="client", node_overrides=None):
    """fedsim's federated mode and the bridge (in-process) on the same scenario; their metrics."""
    sc = parse(d)
    r = Run(sc)
    r.create_dir(overwrite=True)
    r.execute()
    n = sc.peers.count
    nodes = [{"partition-id": i, "num-partitions": n} | (node_overrides or {}).get(i, {}) for i in range(n)]
    out = tmp_path / "bridge"
    summary = run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), "attack-side": side}, nodes)
    return _metrics(r.dir / "metrics.jsonl"), _metrics(out / "metrics.jsonl"), summary


def test_client_import_pulls_in_neither_ray_nor_matplotlib(tmp_path):
    """What a device imports — the ClientApp module, then a whole local training round — never
    loads ray or matplotlib (checked in a fresh interpreter)."""
    code = textwrap.dedent(f"""
        import sys
        import fedsim.flower.client, fedsim.flower.client_app
        heavy = ("ray", "matplotlib")
        assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
        import numpy as np
        from fedsim.flower import common
        from fedsim.flower.client import FedsimPeer
        sc = common.bridge_scenario({{"dataset": {{"name": "mnist10k"}}, "peers": {{"count": 3}},
                                     "backbone": {{"name": "identity", "cache_dir": {str(tmp_path)!r}}}}})
        peer = FedsimPeer.from_config(sc, {{"partition-id": 1, "num-partitions": 3}})
        vec, loss = peer.train(0, np.zeros(10 * 784 + 10, np.float32))
        assert vec.shape == (7850,) and np.isfinite(loss)
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "over,side",
    [
        ({"strategy.name": "median", "training.optimizer": "adam"}, "client"),
        ({"strategy.name": "krum", "peers.count": 7, "peers.byzantine": 1, "peers.attack.name": "alie"}, "server"),
        ({"strategy.name": "fltrust", "peers.byzantine": 1, "peers.attack.name": "ipm"}, "server"),
        (
            {"strategy.name": "trimmed_mean", "peers.byzantine": 1, "peers.attack.name": "sign_flip"},
            "client",
        ),
        # a device keeps its own models of the last `delay` rounds across rounds (context.state)
        ({"strategy.name": "median", "peers.byzantine": 1, "peers.attack.name": "stale",
          "peers.attack.params": {"delay": 2}}, "client"),
    ],
)
def test_bridge_equals_fedsim_federated_mode(fed_scenario, tmp_path, over, side):
    """Same zero initial head, every client every round, the same minibatches (keyed by partition
    id), momentum/Adam state kept in context.state: the bridge reproduces fedsim's federated mode
    exactly (accuracy bit for bit; the train loss up to float summation order)."""
    sim, br, summary = _both(fed_scenario(**over), tmp_path, side)
    assert [x["round"] for x in br] == [0, 1, 2]
    for a, b in zip(sim, br, strict=True):
        assert b["accuracy_mean"] == a["accuracy_mean"]
        assert b["test_loss"] == pytest.approx(a["test_loss"], abs=1e-6)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["dropped"] == a["dropped"] and b["rejected"] == []
        assert b["received"] == parse(fed_scenario(**over)).peers.count
    assert summary["final_accuracy_mean"] == sim[-1]["accuracy_mean"]
    assert 0 < summary["final_accuracy_mean"] <= 1
    assert "client_val_accuracy" in br[-1]  # the devices scored the global head on their validation splits


def test_bridge_files_a_round_and_the_summary_as_fedsim_run_does(fed_scenario, tmp_path):
    """The Flower server builds its record, timings and summary with fedsim run's code
    (simulation.round_metrics / accuracy_fields, runfiles.RoundFiles / run_summary): every key
    fedsim run writes is there with the same value (per_peer and rounds without evaluation
    included; the train and test losses up to float summation order), plus the bridge's own keys."""
    d = fed_scenario(rounds=3, **{"peers.byzantine": 1, "peers.attack.name": "sign_flip",
                                  "evaluation.every": 2, "evaluation.per_peer": True})
    sim, br, summary = _both(d, tmp_path, "server")
    bridge_keys = {"received", "rejected", "quorum", "eval_rejected", "client_val_accuracy", "client_val_loss"}
    assert ["accuracy_mean" in x for x in br] == [False, True, True]
    for a, b in zip(sim, br, strict=True):
        assert set(b) - bridge_keys == set(a), (sorted(a), sorted(b))
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b.get("test_loss") == pytest.approx(a.get("test_loss"), abs=1e-6)
        losses = ("train_loss", "test_loss")
        assert {k: v for k, v in b.items() if k in a and k not in losses} == {k: v for k, v in a.items()
                                                                               if k not in losses}
    assert br[1]["per_peer"] == {"-1": br[1]["accuracy_mean"]}
    sim_timings = _metrics(tmp_path / "runs" / "t" / "timings.jsonl")
    br_timings = _metrics(tmp_path / "bridge" / "timings.jsonl")
    assert [set(x) for x in br_timings] == [set(x) for x in sim_timings] == [{"round", "seconds", *PHASES}] * 3
    run_summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert json.loads((tmp_path / "bridge" / "summary.json").read_text()) == summary
    assert set(summary) - set(run_summary) == {"engine", "rounds_completed", "attack_side", "rejected_total",
                                               "wall_seconds"}
    same = set(run_summary) - {"wall_seconds_rounds", "resumed_after_round"}
    assert same <= set(summary) and {k: summary[k] for k in same} == {k: run_summary[k] for k in same}


@pytest.mark.parametrize("attack,reason", [("nan", "non-finite"), ("wrong_shape", "shape (651,) != (650,)"),
                                           ("crash", "no update")])
def test_malformed_client_update_is_rejected_and_logged(fed_scenario, tmp_path, caplog, attack, reason):
    """A device sending NaN/Inf, a head of the wrong shape, or nothing: the server rejects that
    update with a log line naming node, partition and reason; the round completes with the others
    (and equals the simulation, whose server drops the same malformed message)."""
    d = fed_scenario(**{"strategy.name": "median", "peers.byzantine": 1, "peers.attack.name": attack})
    byz = int(prepare(parse(d)).info["byzantine_ids"][0])
    with caplog.at_level(logging.WARNING, logger="flwr.fedsim"):
        sim, br, summary = _both(d, tmp_path, "client")
    assert summary["rounds_completed"] == 3 and summary["rejected_total"] == 3
    for a, b in zip(sim, br, strict=True):
        assert [r["partition"] for r in b["rejected"]] == [byz]
        assert reason in b["rejected"][0]["reason"]
        assert b["accuracy_mean"] == a["accuracy_mean"] and b["dropped"] == a["dropped"] == 1
    logged = [r.getMessage() for r in caplog.records if "rejected the update" in r.getMessage()]
    assert len(logged) == 3 and f"(partition {byz})" in logged[0] and reason in logged[0]


def test_the_strategys_server_leaves_the_server_processes_torch_threads_alone(fed_scenario):
    """The ServerApp's process is not a simulated group's: building the strategy's
    ``fedsim.server.Server`` keeps its torch thread count (the scenario's engine section describes the
    simulation's layout; a Ray scenario's says 1 thread)."""
    import torch

    from fedsim.flower.server import FedsimStrategy

    before = torch.get_num_threads()
    try:
        for engine in ({"engine.backend": "ray"}, {"engine.backend": "local", "engine.num_actors": 4,
                                                   "engine.local_parallel": "auto"}):
            torch.set_num_threads(3)
            sc = parse(fed_scenario(**engine))
            FedsimStrategy(sc, prepare(sc))
            assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_strategy_collect_rejects_every_kind_of_bad_reply(fed_scenario):
    """Replies crafted by hand: wrong shape, NaN, Inf, non-numeric dtype, 2-D, missing or duplicate
    partition id, an error reply — each rejected with its reason; the good ones land in their rows."""
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 7}))
    strat = FedsimStrategy(sc, prepare(sc))
    P = strat.num_params
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        def reply(node, pid, arr=None, extra=None):
            ins = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
            content = RecordDict({common.METRICS: MetricRecord(({} if pid is None else {"partition-id": pid})
                                                              | {"train-loss": 1.0} | (extra or {})),
                                  common.CONFIG: device_code()})
            if arr is not None:
                content[common.ARRAYS] = ArrayRecord({common.HEAD: Array(arr)})
            return Message(content=content, reply_to=ins)

        good = np.ones(P, np.float32)
        nan, inf = good.copy(), good.copy()
        nan[3], inf[-1] = np.nan, np.inf
        err = Message(Error(code=1, reason="boom"),
                      reply_to=Message(content=RecordDict(), dst_node_id=19, message_type=MessageType.TRAIN))
        replies = [
            reply(10, 0, good), reply(11, 1, np.ones(P + 1, np.float32)), reply(12, 2, nan), reply(13, 3, inf),
            reply(14, 4, np.array(["x"] * P)), reply(15, None, good), reply(16, 0, good * 2),
            reply(17, 9, good), reply(18, 5, good.reshape(1, P)), err, reply(20, 6, good * 3),
        ]
        rows, losses, received, rejected = strat.collect(replies)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    reasons = {r["node"]: r["reason"] for r in rejected}
    assert received == 10 and len(rejected) == 9
    assert "shape" in reasons[11] and "non-finite" in reasons[12] and "non-finite" in reasons[13]
    assert "dtype" in reasons[14] and "partition-id" in reasons[15] and "assigned to node 10" in reasons[16]
    assert "not in 0..6" in reasons[17] and "shape (1, 650)" in reasons[18] and "boom" in reasons[19]
    np.testing.assert_array_equal(rows[0], good)
    np.testing.assert_array_equal(rows[6], good * 3)
    assert np.isnan(rows[1:6]).all()  # dropped by strategies.aggregate, as malformed simulated messages
    stats = strat.server.aggregate(0, rows)
    assert stats == {"dropped": 5, "skipped": 0}
    np.testing.assert_allclose(strat.server.get_global(), good * 2)  # the mean of the two good heads


def test_client_node_config(fed_scenario, tmp_path):
    sc = common.bridge_scenario(fed_scenario())
    with pytest.raises(common.BridgeError, match="num-partitions"):
        FedsimPeer.from_config(sc, {"partition-id": 0, "num-partitions": 4})
    with pytest.raises(common.BridgeError, match="partition-id.*0..4"):
        FedsimPeer.from_config(sc, {"partition-id": 5, "num-partitions": 5})
    with pytest.raises(common.BridgeError, match="partition-id' is missing"):
        FedsimPeer.from_config(sc, {})
    with pytest.raises(common.BridgeError, match="head is 10×64, the server's 10×65"):
        FedsimPeer.from_config(sc, {"partition-id": 0}, layer=(10, 65))
    # `attack` in the node config makes this device Byzantine: a sign flip sends -own
    honest = FedsimPeer.from_config(sc, {"partition-id": 2})
    flip = FedsimPeer.from_config(sc, {"partition-id": 2, "attack": "sign_flip"})
    g = np.zeros(650, np.float32)
    (v1, _), (v2, _) = honest.train(0, g), flip.train(0, g)
    assert flip.byzantine and not honest.byzantine
    np.testing.assert_allclose(v2, -v1)
    with pytest.raises(common.BridgeError, match="attack-side=server"):
        FedsimPeer.from_config(sc, {"partition-id": 2, "attack": "sign_flip"}, attack_side="server")


def test_client_with_its_own_local_data(fed_scenario, tmp_path):
    """`local-data`: a device trains on its own .npz instead of a partition of the scenario dataset."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(60, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 10
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    sc = common.bridge_scenario(fed_scenario())
    peer = FedsimPeer.from_config(sc, {"partition-id": 1, "local-data": str(tmp_path)}, layer=(10, 64))
    assert peer.num_train + len(peer.group.val[0][1]) == 50  # the training split of the 60 samples (5 per class)
    vec, loss = peer.train(0, np.zeros(650, np.float32))
    assert vec.shape == (650,) and np.isfinite(vec).all() and loss > 0
    assert 0 <= peer.evaluate(vec)["val-accuracy"] <= 1
    with pytest.raises(common.BridgeError, match="features"):
        FedsimPeer.from_config(sc, {"partition-id": 1, "local-data": str(tmp_path)}, layer=(10, 65))


def test_export_writes_a_valid_flower_app(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    from fedsim.flower.cli import flower

    res = CliRunner().invoke(flower, ["export", "scenarios/quickstart.yaml", str(tmp_path / "app"),
                                      "--set", "rounds=3", "--run-config", "attack-side=server"])
    assert res.exit_code == 0, res.output
    assert "federated mode" in res.output  # quickstart is decentralized
    config, _ = load_and_validate(tmp_path / "app" / "pyproject.toml", check_module=True)
    app = config["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "fedsim.flower.server_app:app",
                                 "clientapp": "fedsim.flower.client_app:app"}
    assert app["config"]["attack-side"] == "server"
    sc = common.scenario_from_run_config(app["config"])
    assert sc.mode == "federated" and sc.topology.kind == "star" and sc.rounds == 3 and sc.peers.count == 24
    assert (tmp_path / "app" / "scenario.yaml").exists()
    res = CliRunner().invoke(flower, ["export", "scenarios/quickstart.yaml", str(tmp_path / "app")])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = CliRunner().invoke(flower, ["export", "scenarios/quickstart.yaml", str(tmp_path / "b"),
                                      "--run-config", "colour=red"])
    assert res.exit_code != 0 and "unknown run config keys" in res.output


def test_cli_command_lines(tmp_path):
    from fedsim.flower.cli import flower

    (tmp_path / "ca.crt").write_text("x")
    (tmp_path / "k").write_text("x")
    r = CliRunner().invoke(flower, ["client", "--superlink", "10.0.0.5:8000", "--partition-id", "3",
                                    "--num-partitions", "24", "--root-certificates", str(tmp_path / "ca.crt"),
                                    "--auth-key", str(tmp_path / "k"), "--data-dir", str(tmp_path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "-m fedsim.flower.launch supernode --superlink 10.0.0.5:8000 --node-config" in r.output
    assert "partition-id=3 num-partitions=24 data-dir=" in r.output
    assert f"--root-certificates {tmp_path / 'ca.crt'} --auth-supernode-private-key {tmp_path / 'k'}" in r.output
    assert "--insecure" not in r.output
    assert r.output.rstrip().endswith("--warm --poll-interval 1.0")  # one ClientApp process; poll every 1 s
    r = CliRunner().invoke(flower, ["client", "--superlink", "h:8000", "--partition-id", "0", "--num-partitions", "2",
                                    "--insecure", "--no-warm", "--poll-interval", "0.5", "--dry-run"])
    assert r.exit_code == 0 and "--warm" not in r.output and "--poll-interval 0.5" in r.output, r.output
    r = CliRunner().invoke(flower, ["client", "--superlink", "h:8000", "--partition-id", "0", "--num-partitions", "2"])
    assert r.exit_code != 0 and "TLS is on by default" in r.output
    r = CliRunner().invoke(flower, ["client", "--superlink", "h:8000", "--partition-id", "2", "--num-partitions", "2",
                                    "--insecure", "--dry-run"])
    assert r.exit_code != 0 and "0..1" in r.output
    (tmp_path / "certs").mkdir()
    for f in ("ca.crt", "server.pem", "server.key"):
        (tmp_path / "certs" / f).write_text("x")
    r = CliRunner().invoke(flower, ["superlink", "--certs-dir", str(tmp_path / "certs"), "--auth", "--dry-run"])
    assert r.exit_code == 0, r.output
    for part in ("--disable-runtime-dependency-installation", "--ssl-ca-certfile", "--enable-supernode-auth"):
        assert part in r.output
    r = CliRunner().invoke(flower, ["superlink", "--insecure", "--auth", "--dry-run"])
    assert r.exit_code != 0 and "needs TLS" in r.output
    assert "--host 0.0.0.0 " in CliRunner().invoke(flower, ["superlink", "--certs-dir", str(tmp_path / "certs"),
                                                             "--dry-run"]).output  # TLS: for the devices
    r = CliRunner().invoke(flower, ["superlink", "--insecure", "--dry-run"])  # plaintext: this machine only
    assert r.exit_code == 0 and "--host 127.0.0.1 " in r.output and "0.0.0.0" not in r.output, r.output
    r = CliRunner().invoke(flower, ["superlink", "--insecure", "--host", "0.0.0.0", "--dry-run"])  # unless asked
    assert r.exit_code == 0 and "--host 0.0.0.0 " in r.output, r.output


def test_certificates_and_node_keys_load(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from fedsim.flower.certs import make_certificates, make_node_keys

    paths = make_certificates(tmp_path, ("127.0.0.1", "pi-server.local"))
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["pi-server.local"]
    priv, pub = make_node_keys(tmp_path, "node0")
    serialization.load_ssh_private_key(priv.read_bytes(), None)
    serialization.load_ssh_public_key(pub.read_bytes())
    assert oct(priv.stat().st_mode & 0o777) == "0o600"


def test_demo_in_process_matches_fedsim(fed_scenario, tmp_path):
    """`fedsim flower demo --in-process --compare` prints the bridge's and fedsim's accuracy per round."""
    import yaml

    from fedsim.flower.cli import flower

    src = tmp_path / "s.yaml"
    src.write_text(yaml.safe_dump(fed_scenario(rounds=2)))
    r = CliRunner().invoke(flower, ["demo", str(src), "--in-process", "--compare", "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 0, r.output
    rows = [x.split() for x in r.output.splitlines() if x.strip()[:1].isdigit()]
    assert len(rows) == 2 and all(float(x[1]) == float(x[2]) and float(x[3]) == 0 for x in rows)


# ---------------------------------------------------------------------- launcher: PATH and the closed control plane
def _asgi_call(gate, path: str, client: tuple[str, int] | None) -> tuple[int | None, bool]:
    """Send one HTTP request through ``gate``; returns (status it answered or None, inner app reached)."""
    import asyncio

    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["path"])

    async def send(msg):
        sent.append(msg)

    async def receive():  # pragma: no cover - the gate never reads a body
        return {"type": "http.request", "body": b""}

    gate.app = inner
    asyncio.run(gate({"type": "http", "path": path, "client": client}, receive, send))
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    return status, bool(reached)


def test_control_plane_gate_refuses_other_machines():
    """Control and Runtime API paths from a non-local peer get 403 and never reach Flower; the
    Fleet API and requests from this machine pass."""
    from fedsim.flower.launch import ControlPlaneGate

    gate = ControlPlaneGate(None, bound="0.0.0.0")
    for path in ("/v1/control/start-run", "/v1/control", "/v1/runtime/push-messages"):
        assert _asgi_call(gate, path, ("192.0.2.9", 5000)) == (403, False), path
        assert _asgi_call(gate, path, None) == (403, False), path  # unknown peer: refused
        for local in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"):
            assert _asgi_call(gate, path, (local, 5000)) == (None, True), (path, local)
    for path in ("/v1/fleet/pull-messages", "/v1/controlled", "/health"):
        assert _asgi_call(gate, path, ("192.0.2.9", 5000)) == (None, True), path
    bound = ControlPlaneGate(None, bound="192.0.2.2")  # bound to one address: this machine dials it
    assert _asgi_call(bound, "/v1/runtime/x", ("192.0.2.2", 5000)) == (None, True)
    assert _asgi_call(bound, "/v1/runtime/x", ("192.0.2.3", 5000)) == (403, False)


def test_launcher_puts_its_own_bin_first_on_path(monkeypatch):
    """Flower starts flower-superexec / flwr-*app by bare name: the launcher's environment has the
    interpreter's bin directory first on PATH, whatever PATH was (also empty)."""
    import sys
    from pathlib import Path

    from fedsim.flower import launch

    own = str(Path(sys.executable).parent)
    assert launch.env_with_own_bin({"PATH": "/usr/bin:/bin"})["PATH"] == f"{own}:/usr/bin:/bin"
    assert launch.env_with_own_bin({})["PATH"] == own
    assert launch.env_with_own_bin({"PATH": f"/x:{own}"})["PATH"] == f"{own}:/x"
    cmd = launch.launch_command("superlink", ["--host", "0.0.0.0"])
    assert cmd[:4] == [sys.executable, "-m", "fedsim.flower.launch", "superlink"] and Path(cmd[0]).is_absolute()
    with pytest.raises(ValueError, match="role"):
        launch.launch_command("superexec", [])


def test_launcher_caps_the_supernode_waits(monkeypatch):
    """Flower's SuperNode sleeps a fixed 3 s between polls of the SuperLink (0.5 s between looks for
    a reply): with --poll-interval the launcher caps those module-level sleeps."""
    from flwr.supernode import start_client_internal as sci

    from fedsim.flower import launch

    monkeypatch.setattr(sci, "time", sci.time)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    launch.cap_supernode_sleeps(0.2)
    sci.time.sleep(3)
    sci.time.sleep(0.5)
    sci.time.sleep(0.1)
    assert slept == [0.2, 0.2, 0.1]
    assert sci.time.monotonic is __import__("time").monotonic


def test_device_reported_eval_metrics_are_checked_and_weighted_by_the_server(fed_scenario):
    """A device claiming num-examples=1e9 with accuracy 0.999 does not decide the mean: weights are
    the server's own validation counts; accuracy outside [0, 1], a negative loss and a second
    reply for a partition are ignored and listed in the round's eval_rejected."""
    from fedsim.flower.server import FedsimStrategy, validation_sizes

    sc = parse(fed_scenario(**{"peers.count": 5}))
    prep = prepare(sc)
    strat = FedsimStrategy(sc, prep)
    sizes = validation_sizes(prep)
    assert sizes == [len(v) for s in prep.setups for v in s.val_idx] and min(sizes) > 0
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        def reply(node, pid, acc, loss, n):
            ins = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.EVALUATE)
            m = MetricRecord({"partition-id": pid, "val-accuracy": acc, "val-loss": loss, "num-examples": n})
            return Message(content=RecordDict({common.METRICS: m, common.CONFIG: device_code()}), reply_to=ins)

        out = strat.aggregate_evaluate(1, [
            reply(10, 0, 0.2, 1.0, sizes[0]), reply(11, 1, 0.999, 0.01, int(1e9)), reply(12, 2, 1.5, 0.5, sizes[2]),
            reply(13, 3, 0.5, -1.0, sizes[3]), reply(10, 0, 0.9, 0.1, sizes[0]),
        ])
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    want = (0.2 * sizes[0] + 0.999 * sizes[1]) / (sizes[0] + sizes[1])
    assert out["val-accuracy"] == pytest.approx(want) and out["devices"] == 2
    reasons = {r["node"]: r["reason"] for r in strat._rec["eval_rejected"]}
    assert set(reasons) == {12, 13, 10}
    assert "not in [0, 1]" in reasons[12] and "val-loss" in reasons[13] and "second evaluation" in reasons[10]


def _asgi_post(app, path: str, body: bytes, *, chunk: int = 1 << 20, declare: bool = True):
    """POST ``body`` through an ASGI ``app`` in chunks; returns (status or None, bodies the inner app read)."""
    import asyncio

    from fedsim.flower.launch import ReplySizeCap

    parts = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    got, sent = [], []

    async def inner(scope, receive, send):
        data, more = b"", True
        while more:
            m = await receive()
            data += m.get("body", b"")
            more = m.get("more_body", False)
        got.append(data)

    async def receive():
        p = parts.pop(0)
        return {"type": "http.request", "body": p, "more_body": bool(parts)}

    async def send(m):
        sent.append(m)

    assert isinstance(app, ReplySizeCap)
    app.app = inner
    headers = [(b"content-length", str(len(body)).encode())] if declare else []
    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": headers, "client": ("192.0.2.9", 1)},
                     receive, send))
    return next((m["status"] for m in sent if m["type"] == "http.response.start"), None), got


def test_reply_size_cap_refuses_before_flower_reads():
    """The SuperLink's cap on a device reply: a push larger than the cap (declared or streamed) gets
    413 and never reaches Flower; objects of one message are summed, so splitting a big array into
    Flower's 5 MB objects does not get around it; other sessions, small pushes and pulls pass untouched."""
    from flwr.proto.message_pb2 import PushObjectRequest
    from flwr.proto.node_pb2 import Node

    from fedsim.flower.launch import ReplySizeCap

    cap = ReplySizeCap(None, max_bytes=1000)
    big = b"x" * 1500
    assert _asgi_post(cap, "/v1/fleet/push-messages", big) == (413, [])
    assert _asgi_post(cap, "/v1/fleet/push-messages", big, chunk=100, declare=False) == (413, [])
    assert _asgi_post(cap, "/v1/fleet/pull-object", big) == (None, [big])  # not a push: untouched

    def obj(session: str, size: int) -> bytes:
        return PushObjectRequest(node=Node(node_id=7), run_id=3, object_id="o", object_content=b"y" * size,
                                 session_id=session).SerializeToString()

    first = obj("s1", 400)
    assert _asgi_post(cap, "/v1/fleet/push-object", first) == (None, [first])  # the body reaches Flower intact
    assert _asgi_post(cap, "/v1/fleet/push-object", obj("s1", 400))[0] is None  # 800 of 1000
    assert _asgi_post(cap, "/v1/fleet/push-object", obj("s1", 400)) == (413, [])  # 1200 > 1000
    assert _asgi_post(cap, "/v1/fleet/push-object", obj("s2", 400))[0] is None  # another message
    with pytest.raises(ValueError, match="positive"):
        ReplySizeCap(None, max_bytes=0)


def test_server_rejects_an_oversized_head_before_converting_it(fed_scenario):
    """A head bigger than any right-shaped head is rejected from its byte size, without numpy()."""
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 2}))
    strat = FedsimStrategy(sc, prepare(sc))
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        ins = Message(content=RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN)
        huge = np.ones(strat.num_params * 10, np.float32)
        msg = Message(content=RecordDict({common.METRICS: MetricRecord({"partition-id": 1, "train-loss": 1.0}),
                                          common.ARRAYS: ArrayRecord({common.HEAD: Array(huge)}),
                                          common.CONFIG: device_code()}), reply_to=ins)
        called = []
        orig = Array.numpy
        Array.numpy = lambda self, *a, **k: called.append(1) or orig(self, *a, **k)
        try:
            _, _, _, rejected = strat.collect([msg])
        finally:
            Array.numpy = orig
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert len(rejected) == 1 and "bytes, more than" in rejected[0]["reason"] and not called


def _train_reply(node, pid, arr):
    ins = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({common.METRICS: MetricRecord({"partition-id": pid, "train-loss": 1.0}),
                          common.ARRAYS: ArrayRecord({common.HEAD: Array(arr)}), common.CONFIG: device_code()})
    return Message(content=content, reply_to=ins)


def test_a_partition_belongs_to_the_node_that_first_sent_it(fed_scenario, tmp_path):
    """First come: round 1 binds node 10 to partition 0 and node 11 to partition 1. In round 2
    node 11 sends partition 0 *first* (it used to win: the first reply of a partition was taken)
    and an unknown node 12 sends partition 1: both are ignored, node 10's update is used. The
    binding survives a ServerApp restart of the same Flower run, not another run."""
    from fedsim.flower.identity import PartitionAssignment
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 2}))
    store = tmp_path / "partitions.json"
    strat = FedsimStrategy(sc, prepare(sc), assignment=PartitionAssignment(2, store=store, run_id=7))
    P = strat.num_params
    good, evil = np.ones(P, np.float32), np.full(P, 9.0, np.float32)
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        rows, _, _, rejected = strat.collect([_train_reply(10, 0, good), _train_reply(11, 1, good)])
        assert rejected == [] and not np.isnan(rows).any()
        rows, _, _, rejected = strat.collect([_train_reply(11, 0, evil), _train_reply(10, 0, good),
                                              _train_reply(12, 1, evil)])
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    np.testing.assert_array_equal(rows[0], good)
    assert np.isnan(rows[1]).all()
    reasons = {r["node"]: r["reason"] for r in rejected}
    assert reasons == {11: "node 11 is assigned partition 1, not 0", 12: "partition 1 is assigned to node 11"}
    assert PartitionAssignment(2, store=store, run_id=7).check(11, 0) == "node 11 is assigned partition 1, not 0"
    assert PartitionAssignment(2, store=store, run_id=8).check(11, 0) == ""  # a new run binds afresh


def test_partition_map_file(tmp_path):
    """A partition map fixes the binding; nodes outside it are refused; a bad file is one clear error."""
    from fedsim.errors import FedsimError
    from fedsim.flower.common import BridgeError
    from fedsim.flower.identity import PartitionAssignment, load_partition_map

    f = tmp_path / "map.json"
    f.write_text('{"5": 0, "6": 1}')
    a = PartitionAssignment(2, fixed=load_partition_map(f, 2))
    assert a.check(5, 0) == "" and a.check(6, 1) == ""
    assert a.check(7, 0) == "node 7 is not in the partition map"
    assert a.check(5, 1) == "node 5 is assigned partition 0, not 1"
    b = PartitionAssignment(3, fixed=load_partition_map(f, 3))
    assert b.check(7, 2) == "node 7 is not in the partition map"
    for text, msg in (('{"5": 0, "6": 0}', "partition 0 is given to nodes 5 and 6"),
                      ('{"5": 2}', "node 5: partition 2 is not an integer in 0..1"),
                      ('{"x": 0}', "node id 'x'"), ("[1]", "must hold an object"), ("{", "not valid JSON")):
        f.write_text(text)
        with pytest.raises(BridgeError, match=msg) as e:
            load_partition_map(f, 2)
        assert str(f) in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, FedsimError)
    with pytest.raises(BridgeError, match="cannot read"):
        load_partition_map(tmp_path / "missing.json", 2)


def test_a_rerun_never_truncates_earlier_metrics(fed_scenario, tmp_path):
    """A second run into the same output-dir is refused (one line, RunDirExistsError) before any
    work, leaving the earlier metrics byte for byte; with overwrite=true it replaces them. The
    demo's CLI says the same and starts nothing."""
    from fedsim.errors import RunDirExistsError
    from fedsim.flower.cli import flower

    sc = parse(fed_scenario(**{"rounds": 1, "peers.count": 2}))
    out = tmp_path / "bridge"
    rc = {"scenario": common.scenario_yaml(sc), "output-dir": str(out)}
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]
    run_in_process(rc, nodes)
    before = (out / "metrics.jsonl").read_bytes()
    assert before.strip()
    with pytest.raises(RunDirExistsError, match="overwrite=true") as e:
        run_in_process(rc, nodes)
    assert "\n" not in str(e.value) and (out / "metrics.jsonl").read_bytes() == before
    (out / "metrics.jsonl").write_text('{"round": 99}\n')
    run_in_process(rc | {"overwrite": True}, nodes)
    assert (out / "metrics.jsonl").read_bytes() == before  # replaced by the same run's records
    scen = tmp_path / "s.yaml"
    scen.write_text(common.scenario_yaml(sc))
    (tmp_path / "wd" / "out").mkdir(parents=True)
    (tmp_path / "wd" / "out" / "metrics.jsonl").write_text('{"round": 0}\n')
    r = CliRunner().invoke(flower, ["demo", str(scen), "--in-process", "--workdir", str(tmp_path / "wd")])
    assert r.exit_code != 0 and "holds an earlier run's metrics" in r.output
    assert (tmp_path / "wd" / "out" / "metrics.jsonl").read_text() == '{"round": 0}\n'


class _FakeGrid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_dropouts_quorum_ttl_and_one_node_wait(fed_scenario, monkeypatch):
    """3 partitions, one device gone: the full node-wait is spent once (before round 1), not on every
    later train/evaluate call; messages carry TTL = round-timeout (not Flower's 12 h); a round with
    fewer valid updates than min-replies leaves the global head unchanged (quorum false)."""
    import fedsim.flower.strategy as srv  # the round loop (its time.sleep)
    from fedsim.flower.grid import TTL_GRACE_S
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 3}))
    now = [0.0]
    monkeypatch.setattr(srv.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    strat = FedsimStrategy(sc, prepare(sc), node_wait=300.0, round_timeout=45.0, min_replies=2,
                           clock=lambda: now[0])
    grid = _FakeGrid([10, 11])
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        msgs = strat.configure_train(1, strat.initial_arrays(), ConfigRecord(), grid)
        assert 300.0 <= now[0] < 302.0 and [m.metadata.dst_node_id for m in msgs] == [10, 11]
        assert all(m.metadata.ttl == 45.0 + TTL_GRACE_S for m in msgs)
        t = now[0]
        for r in (2, 3):
            strat.configure_train(r, strat.initial_arrays(), ConfigRecord(), grid)
            strat.configure_evaluate(r, strat.initial_arrays(), ConfigRecord(), grid)
        assert now[0] == t  # two devices >= min-replies: no more waiting
        g0 = strat.server.get_global().copy()
        arrays, _ = strat.aggregate_train(1, [_train_reply(10, 0, np.ones(strat.num_params, np.float32))])
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    np.testing.assert_array_equal(strat.server.get_global(), g0)
    assert strat._rec["quorum"] is False and strat._rec["skipped"] == 1 and strat._rec["dropped"] == 2
    with pytest.raises(common.BridgeError, match="min-replies"):
        FedsimStrategy(sc, prepare(sc), min_replies=4)


def test_the_bridge_refuses_client_sampling(fed_scenario):
    """fedsim's per-round client sampling is not implemented on Flower: a clear error, not a run
    that silently trains every device (sampling everyone is the plain run and is accepted)."""
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(sampling={"fraction": 0.5}))
    with pytest.raises(common.BridgeError, match="^scenario sampling: client sampling per round is not implemented"):
        FedsimStrategy(sc, prepare(sc))
    sc = parse(fed_scenario(sampling={"fraction": 1.0}))
    FedsimStrategy(sc, prepare(sc))


def test_client_eval_piggybacks_on_the_train_message(fed_scenario, tmp_path, monkeypatch):
    """With client-eval on, a device scores the global head it receives with the next round's
    train message (eval-piggyback, the default): one message per device per round, and one
    evaluate message after the last round (no train message follows it). Every metrics record —
    client_val_* included — equals that of the run with a separate evaluate message per round
    (eval-piggyback=false): the same head, after the same round, on the same validation split."""
    from fedsim.flower import inprocess

    sent: list[list[str]] = []
    push = inprocess.InProcessGrid.push_messages

    def counting(self, messages):
        messages = list(messages)
        sent.append([m.metadata.message_type for m in messages])
        return push(self, messages)

    monkeypatch.setattr(inprocess.InProcessGrid, "push_messages", counting)
    sc = parse(fed_scenario(rounds=4, **{"evaluation.every": 1}))
    n = sc.peers.count
    nodes = [{"partition-id": i, "num-partitions": n} for i in range(n)]
    runs = {}
    for piggyback in (True, False):
        sent.clear()
        out = tmp_path / f"piggyback-{piggyback}"
        run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), "eval-piggyback": piggyback},
                       nodes)
        runs[piggyback] = (_metrics(out / "metrics.jsonl"), [list(x) for x in sent if x])
    (fast, fast_sent), (slow, slow_sent) = runs[True], runs[False]
    train, evaluate = [MessageType.TRAIN] * n, [MessageType.EVALUATE] * n
    assert fast_sent == [train] * 4 + [evaluate]
    assert slow_sent == [train, evaluate] * 4
    assert [x["round"] for x in fast] == [0, 1, 2, 3]
    assert all("client_val_accuracy" in x and x["eval_rejected"] == [] for x in fast)
    assert fast == slow


def test_polling_grid_pulls_at_its_interval(monkeypatch):
    """The ServerApp pulls replies every poll-interval seconds (Flower's HttpGrid: a fixed 3 s)."""
    from fedsim.flower import grid as fg

    slept: list[float] = []
    monkeypatch.setattr(fg.time, "sleep", slept.append)

    class Grid:
        def __init__(self):
            self.pulls = 0

        def push_messages(self, messages):
            return ["a", "b"]

        def pull_messages(self, ids):
            self.pulls += 1
            if self.pulls < 3:
                return []
            return [type("R", (), {"metadata": type("M", (), {"reply_to_message_id": i})})() for i in ids]

    g = fg.PollingGrid(Grid(), 0.25)
    msgs = [type("Q", (), {"metadata": type("M", (), {"dst_node_id": n})})() for n in (10, 11)]
    assert len(list(g.send_and_receive(msgs, timeout=60))) == 2
    assert slept == [0.25, 0.25]
    with pytest.raises(common.BridgeError, match="poll-interval"):
        fg.PollingGrid(Grid(), 0)


class _FakeRuntime:
    """The SuperLink's Runtime API as Flower's HttpGrid sees it, for nodes 10 and 11: node 10 answers
    at once with a reply whose objects are never uploaded (the SuperLink refused them) until its
    object-push session expires at ``expires`` s (then: not found); node 11 answers in full
    ``honest_at`` s after the push. A pull for an expired message (created_at + ttl passed) gets
    Flower's own "Message Unavailable" error instead of its reply, as the SuperLink's does."""

    def __init__(self, honest_at, expires):
        self.t0, self.honest_at, self.expires = time.monotonic(), honest_at, expires
        self.sent, self.delivered, self.objects, self.stuck = {}, set(), {}, set()

    def push(self, run_id, msgs):
        self.t0 = time.monotonic()
        for m in msgs:
            self.sent[m.metadata.message_id] = m
        return [m.metadata.message_id for m in msgs]

    def GetNodes(self, req):  # noqa: N802 - Flower's names
        from flwr.proto.node_pb2 import NodeInfo
        from flwr.proto.runtime_pb2 import GetNodesResponse

        return GetNodesResponse(nodes=[NodeInfo(node_id=10), NodeInfo(node_id=11)])

    def _reply(self, ins):
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

        node = ins.metadata.dst_node_id
        size = ins.content[common.ARRAYS][common.HEAD].numpy().size
        head = np.full(size, node / 1000, np.float32)  # the two replies share no object
        content = RecordDict({common.METRICS: MetricRecord({"partition-id": 1 if node == 10 else 0,
                                                            "train-loss": 1.0, "num-examples": 1}),
                              common.ARRAYS: ArrayRecord({common.HEAD: Array(head)}),
                              # the device's code, made distinct per node: the two replies share no object
                              common.CONFIG: ConfigRecord(dict(device_code()) | {"node": node})})
        r = Message(content=content, reply_to=ins)
        r.metadata.__dict__["_src_node_id"] = node
        r.metadata.__dict__["_message_id"] = r.object_id
        objs = get_all_nested_objects(r)
        self.objects |= {k: o.deflate() for k, o in objs.items()}
        if node == 10:
            self.stuck |= set(objs)
        return r

    def PullMessages(self, req):  # noqa: N802
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse
        from flwr.server.superlink.linkstate.utils import (
            create_message_error_unavailable_ins_message,
            message_ttl_has_expired,
        )
        from flwr.supercore.inflatable.inflatable_object import get_object_tree

        now, msgs, trees = time.monotonic() - self.t0, [], []
        for mid in req.message_ids:
            ins = self.sent[mid]
            if mid in self.delivered:
                continue
            if message_ttl_has_expired(ins.metadata, time.time()):
                r = create_message_error_unavailable_ins_message(mid, 1)
            elif ins.metadata.dst_node_id == 10 or now >= self.honest_at:
                r = self._reply(ins)
            else:
                continue
            self.delivered.add(mid)
            msgs.append(message_to_proto(remove_content_from_message(r)))
            trees.append(get_object_tree(r))
        return PullAppMessagesResponse(messages_list=msgs, message_object_trees=trees)

    def PullObject(self, req):  # noqa: N802
        from flwr.proto.message_pb2 import PullObjectResponse

        if req.object_id in self.stuck:
            return PullObjectResponse(object_found=time.monotonic() - self.t0 < self.expires, object_available=False)
        if req.object_id not in self.objects:  # an error message generated on the fly
            return PullObjectResponse(object_found=False, object_available=False)
        return PullObjectResponse(object_found=True, object_available=True, object_content=self.objects[req.object_id])

    def ConfirmMessageReceived(self, req):  # noqa: N802
        return None


def test_a_reply_whose_objects_never_come_does_not_hide_the_others(fed_scenario):
    """CI lost an honest device's reply ("received 0"): the ServerApp pulled the entry of a reply the
    SuperLink had refused for its size (its objects never come) before the honest reply existed;
    Flower's pull then waited for those objects until their push session expired (180 s), past the
    round's deadline, and the round ended without pulling again. Here — the strategy's own
    messages, Flower's own HttpGrid over a fake Runtime API, time scaled down (round-timeout 1.5 s,
    session 6 s) — the stuck reply is there at once, the honest one 0.3 s later: the round ends by
    the deadline (plus one retry wait) with the honest update aggregated and the stuck one rejected
    as 'objects are unavailable', attributed to the node it was sent to (not node 1)."""
    from flwr.supercore.run import Run
    from flwr.superlink.grid.http_grid import HttpGrid

    from fedsim.flower.grid import PollingGrid
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 2}))
    strat = FedsimStrategy(sc, prepare(sc), round_timeout=1.5, node_wait=5.0)
    runtime = _FakeRuntime(honest_at=0.3, expires=6.0)
    http = HttpGrid(token="t")
    http._client, http._run = runtime, Run.create_empty(1)  # noqa: SLF001 - a fake Runtime API under Flower's grid
    http._try_push_messages = runtime.push  # noqa: SLF001
    g = PollingGrid(http, 0.05)
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        msgs = strat.configure_train(1, strat.initial_arrays(), ConfigRecord(), g)
        t0 = time.monotonic()
        got = list(g.send_and_receive(msgs, timeout=strat.round_timeout))
        took = time.monotonic() - t0
        strat.aggregate_train(1, got)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    rec = strat._rec
    assert rec["received"] == 1 and rec["dropped"] == 1, rec
    [rej] = rec["rejected"]
    assert rej["node"] == 10 and rej["partition"] is None and "objects are unavailable" in rej["reason"], rej
    assert took < 4.0, took  # the deadline (1.5 s) plus at most one retry wait, not the session's 6 s


def _ins(node):
    msg = Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN, ttl=60.0)
    msg.metadata.__dict__["_message_id"] = msg.object_id
    return msg


def test_a_killed_device_is_named_with_its_partition(fed_scenario):
    """A SuperNode killed after round 1: the SuperLink answers its round-2 message with a
    NODE_UNAVAILABLE error from node 1 (itself). The round's rejected list names the killed node and
    the partition bound to it (not node 1, partition None), and the reason says no reply came."""
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    from fedsim.flower.grid import PollingGrid
    from fedsim.flower.server import FedsimStrategy

    sc = parse(fed_scenario(**{"peers.count": 2}))
    strat = FedsimStrategy(sc, prepare(sc))
    ones = np.ones(strat.num_params, np.float32)

    class Grid:
        def push_messages(self, messages):
            return [m.metadata.message_id for m in messages]

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        strat.aggregate_train(1, [_train_reply(10, 0, ones), _train_reply(11, 1, ones)])  # binds 10→0, 11→1
        g = PollingGrid(Grid(), 0.1)
        strat._grid = g  # noqa: SLF001 - as _messages sets it in a run
        ins = [_ins(10), _ins(11)]
        g.push_messages(ins)
        lost = create_message_error_unavailable_res_message(ins[0].metadata, "node_unavail")
        strat.aggregate_train(2, [lost, _train_reply(11, 1, ones)])
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    [rej] = strat._rec["rejected"]
    assert rej["node"] == 10 and rej["partition"] == 0, rej
    assert rej["reason"].startswith("no reply: Error: Node Unavailable"), rej
    assert strat._rec["received"] == 1 and strat._rec["dropped"] == 1


class _NodeRuntime:
    """A SuperNode's Runtime API as the worker sees it, holding one task: its message's objects
    arrive ``arrive`` s after the start (None: never — the leftover message of a stopped run)."""

    def __init__(self, arrive):  # needs TaskIdentity set (a Message is made here)
        from flwr.app import Context
        from flwr.common.serde import context_to_proto, fab_to_proto, run_to_proto
        from flwr.proto.runtime_pb2 import PullTaskInputResponse
        from flwr.supercore.fab import Fab
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
        from flwr.supercore.run import Run

        self.t0, self.arrive = time.monotonic(), arrive
        self.msg = Message(content=RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=5,
                           message_type=MessageType.TRAIN)
        self.msg.metadata.__dict__["_message_id"] = self.msg.object_id
        self.objects = {k: o.deflate() for k, o in get_all_nested_objects(self.msg).items()}
        ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
        self.input = PullTaskInputResponse(task_id=3, context=context_to_proto(ctx),
                                           run=run_to_proto(Run.create_empty(1)), fab=fab_to_proto(Fab("h", b"", {})))

    def PullTaskInput(self, req):  # noqa: N802 - Flower's names
        return self.input

    def PullMessages(self, req):  # noqa: N802
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto
        from flwr.proto.runtime_pb2 import PullAppMessagesResponse
        from flwr.supercore.inflatable.inflatable_object import get_object_tree

        return PullAppMessagesResponse(messages_list=[message_to_proto(remove_content_from_message(self.msg))],
                                       message_object_trees=[get_object_tree(self.msg)])

    def PullObject(self, req):  # noqa: N802
        from flwr.proto.message_pb2 import PullObjectResponse

        here = self.arrive is not None and time.monotonic() - self.t0 >= self.arrive
        return PullObjectResponse(object_found=True, object_available=here,
                                  object_content=self.objects[req.object_id] if here else b"")

    def ConfirmMessageReceived(self, req):  # noqa: N802
        return None


def _pull_in_thread(runtime, newer, wait=15.0):
    import threading

    from fedsim.flower import worker

    out: dict = {}

    def go():
        try:
            out["message"] = worker.pull_task_input(runtime, newer)[0]
        except Exception as e:  # noqa: BLE001
            out["error"] = e

    t0 = time.monotonic()
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(wait)
    return out, time.monotonic() - t0


def test_worker_drops_a_task_whose_input_never_comes_once_a_newer_one_exists():
    """The warm worker runs a SuperNode's tasks one after the other. After a SuperLink restart a
    SuperNode can leave a task behind whose message objects never come (a message of the stopped
    run: Flower's SuperNode gives it up with RunNotRunningException after creating its task); the
    worker waited for them (Flower: up to 2 h) and the resumed run's task queued behind it forever
    (the loopback resume test timed out). Now the wait ends once the SuperNode has a newer task;
    an input that is merely late (1.5 s here) is still waited for while nothing newer exists."""
    from fedsim.flower import worker

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        calls = []
        out, took = _pull_in_thread(_NodeRuntime(arrive=None), lambda: calls.append(1) or len(calls) >= 2)
        assert isinstance(out.get("error"), worker.SupersededError), out
        assert took < 3 * worker.INPUT_WAIT_STEP + 2, took
        out, took = _pull_in_thread(_NodeRuntime(arrive=1.5), lambda: False)
        assert "error" not in out and out["message"].content["config"]["a"] == 1, out
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_worker_exits_with_its_supernode_even_when_sigint_was_ignored():
    """The warm worker stops when its SuperNode is gone (Flower's parent monitor raises SIGINT). A
    node started with `&` from a script inherits SIGINT ignored (the shell ignores it for background
    jobs): the SIGKILLed SuperNode's worker then ran on for minutes (seen on loopback: orphaned,
    polling the restarted node's port). It must exit whatever the inherited disposition."""
    import signal

    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    parent.kill()
    parent.wait()  # reaped: gone by the time the worker's monitor looks
    worker = subprocess.Popen(
        [sys.executable, "-m", "fedsim.flower.worker", "--runtime-api-address", "127.0.0.1:9",
         "--parent-pid", str(parent.pid)],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        worker.wait(timeout=60)  # imports (seconds), then the monitor's first look (0.2 s)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker outlived its SuperNode")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_client_refuses_missing_local_data_before_it_joins(tmp_path):
    """A device whose `--local-data` is not there is refused in one line at start; it used to join
    the federation and fail every round it was sent (the check ran only in the ClientApp)."""
    from fedsim.flower.cli import flower

    base = ["client", "--superlink", "h:8000", "--partition-id", "0", "--num-partitions", "2", "--insecure",
            "--dry-run", "--local-data"]
    r = CliRunner().invoke(flower, [*base, str(tmp_path / "mine.npz")])
    assert r.exit_code == 2 and "--local-data" in r.output and "does not exist" in r.output, r.output
    (tmp_path / "mine.npz").write_bytes(b"x")
    r = CliRunner().invoke(flower, [*base, str(tmp_path / "mine.npz")])
    assert r.exit_code == 0 and f'local-data="{tmp_path / "mine.npz"}"' in r.output, r.output
    r = CliRunner().invoke(flower, [*base[:-1], "--data-dir", 'a"b'])  # a value Flower's --node-config cannot take
    assert r.exit_code == 2 and "node config data-dir: a value with quotes" in r.output, (r.output, r.exception)


def test_demo_refuses_node_and_run_config_values_flower_cannot_take_before_any_process(tmp_path, monkeypatch):
    """A --plugin path with a quote goes into every node's config, a --workdir with a quote into the run
    config: each refused in one line naming its option, before the SuperLink is spawned (it was spawned,
    then an internal ValueError); a run-config key with a space (Flower's parser drops part of it) too."""
    from fedsim.flower import local
    from fedsim.flower.cli import flower

    spawned: list[str] = []
    monkeypatch.setattr(local.LocalFederation, "__enter__", lambda self: spawned.append("federation") or self)
    plug_dir = tmp_path / 'my "plugins"'
    plug_dir.mkdir()
    plug = plug_dir / "r8rule.py"
    plug.write_text(textwrap.dedent("""\
        import torch
        import strategies
        from dataclasses import dataclass


        @strategies.register("r8_quoted_mean")
        @dataclass
        class R8Mean(strategies.Strategy):
            \"\"\"The mean of own and received vectors.\"\"\"

            exchanges = "output_layer"

            def __call__(self, own, received, ctx):
                return torch.cat([own[None], received]).mean(0)
        """))
    from pathlib import Path

    sc = str(Path(__file__).resolve().parents[1] / "scenarios" / "flower_quickstart.yaml")
    r = CliRunner().invoke(flower, ["demo", sc, "--plugin", str(plug), "--set", f"plugins=[{json.dumps(str(plug))}]"])
    assert r.exit_code == 2 and "--plugin" in r.output and "a value with quotes" in r.output, (r.output, r.exception)
    r = CliRunner().invoke(flower, ["demo", sc, "--workdir", str(tmp_path / "John's \"runs\"")])
    assert r.exit_code == 2 and "--workdir" in r.output, (r.output, r.exception)
    r = CliRunner().invoke(flower, ["demo", sc, "--run-config", "a b=1"])
    assert r.exit_code == 2 and "--run-config" in r.output and "key 'a b'" in r.output, (r.output, r.exception)
    assert spawned == []


def test_client_local_data_expands_home_and_checks_a_folder_at_start(tmp_path, monkeypatch):
    """`--local-data=~/mine.npz` (no shell expands ~ after '='): the device's home; a folder must hold
    exactly one .npz, checked at start like a missing file (the ClientApp's own rule, one function)."""
    from fedsim.flower.cli import flower

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.npz").write_bytes(b"x")
    base = ["client", "--superlink", "h:8000", "--partition-id", "0", "--num-partitions", "2", "--insecure",
            "--dry-run"]
    r = CliRunner().invoke(flower, [*base, "--local-data=~/mine.npz"])
    assert r.exit_code == 0 and f'local-data="{tmp_path / "mine.npz"}"' in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(flower, [*base, "--local-data", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "must hold exactly one .npz file, found 0" in r.output, r.output


def test_run_refuses_a_run_config_flwr_cannot_take_in_one_line(tmp_path):
    """`fedsim flower run --run-config 'set=strategy.name="krum"'`: the value keeps its quotes,
    which `flwr run --run-config` cannot take. It was an internal error with a traceback (a
    ValueError naming a 'node config'); now one line naming the option, before anything starts."""
    from fedsim.flower.cli import flower

    r = CliRunner().invoke(flower, ["run", str(tmp_path), "--superlink", "127.0.0.1:9", "--insecure",
                                    "--run-config", 'set=strategy.name="krum"'])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "--run-config" in r.output and "run config set: a value with quotes is not supported" in r.output
