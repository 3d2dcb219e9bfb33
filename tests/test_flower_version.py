"""The Flower bridge refuses a device whose fedsim code is not the server's (fedsim.codehash):
the check on the ClientApp, and a run in-process where every device runs "another" fedsim."""

import json
import logging

import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord  # noqa: E402

from fedsim.codehash import code_fingerprint  # noqa: E402
from fedsim.flower import client as fc  # noqa: E402
from fedsim.flower import common  # noqa: E402
from fedsim.flower.inprocess import run_in_process  # noqa: E402
from fedsim.scenario import parse  # noqa: E402
from fedsim.version import __version__  # noqa: E402

OTHER = "0123456789ab" + "0" * 52  # another checkout's fingerprint


def _cfg(code, version=__version__):
    return ConfigRecord({} if code is None else {common.SERVER_CODE: code, common.SERVER_VERSION: version})


def test_the_client_check_passes_the_same_code_and_refuses_other_or_none(caplog):
    ours = code_fingerprint()
    fc.check_server_code(_cfg(ours), {})
    with pytest.raises(common.BridgeError) as e:
        fc.check_server_code(_cfg(OTHER, "0.0.9"), {})
    msg = str(e.value)
    assert "\n" not in msg
    assert f"this device runs fedsim {__version__}, code {ours[:12]}" in msg
    assert "the server fedsim 0.0.9, code 0123456789ab" in msg and "allow-version-mismatch=true" in msg
    with pytest.raises(common.BridgeError, match="the server no code fingerprint .a fedsim older than this check."):
        fc.check_server_code(_cfg(None), {})
    fc._MISMATCH_ALLOWED.clear()
    with caplog.at_level(logging.WARNING, logger="flwr.fedsim"):
        for _ in range(3):  # allowed: trains, one warning per server fingerprint
            fc.check_server_code(_cfg(OTHER), {"allow-version-mismatch": True})
    warned = [r.getMessage() for r in caplog.records if "allow-version-mismatch" in r.getMessage()]
    assert len(warned) == 1 and "code 0123456789ab" in warned[0]
    fc._MISMATCH_ALLOWED.clear()


def _run(fed_scenario, tmp_path, name, run_config=()):
    sc = parse(fed_scenario(**{"peers.count": 3, "rounds": 2}))
    out = tmp_path / name
    nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    summary = run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), **dict(run_config)},
                             nodes)
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()], summary


@pytest.fixture()
def fed_scenario(small_scenario):
    def make(**over):
        return small_scenario(**{"mode": "federated", "rounds": 3, "topology.kind": "star", "peers.count": 5} | over)

    return make


def test_devices_running_other_fedsim_code_are_refused_and_listed_each_round(fed_scenario, tmp_path,
                                                                             monkeypatch, caplog):
    """In-process (the code the SuperNodes run): the ServerApp sends its fingerprint, every device
    (tampered to run "another" fedsim) refuses before any set-up; the server lists each under
    ``rejected`` with the device's one line and logs one line per device, the head unchanged
    (quorum false). With run config allow-version-mismatch=true they train, and the run is the
    untampered one to the byte."""
    control, _ = _run(fed_scenario, tmp_path, "control")
    built = []
    monkeypatch.setattr(fc.FedsimPeer, "from_config", lambda *a, **k: built.append(1) or pytest.fail("set up"))
    monkeypatch.setattr(fc, "code_fingerprint", lambda: OTHER)  # the devices' code only, not the server's
    with caplog.at_level(logging.WARNING, logger="flwr.fedsim"):
        refused, summary = _run(fed_scenario, tmp_path, "refused")
    assert not built and summary["rounds_completed"] == 2
    for rec in refused:
        assert rec["received"] == 0 and rec["quorum"] is False and len(rec["rejected"]) == 3
        server = f"the server fedsim {__version__}, code {code_fingerprint()[:12]}"
        for rej in rec["rejected"]:
            assert rej["reason"].startswith("client error: BridgeError: this device runs fedsim")
            assert f"code {OTHER[:12]}, {server}" in rej["reason"]
    logged = [r.getMessage() for r in caplog.records if "rejected the update" in r.getMessage()]
    assert len(logged) == 6 and all("\n" not in x and "the server fedsim" in x for x in logged)
    monkeypatch.undo()
    monkeypatch.setattr(fc, "code_fingerprint", lambda: OTHER)
    allowed, _ = _run(fed_scenario, tmp_path, "allowed", {"allow-version-mismatch": True})
    assert allowed == control and all(r["received"] == 3 for r in allowed)


def test_the_opt_out_is_read_as_a_yes_no_value_not_as_truthy_text():
    """Flower's ``--run-config 'allow-version-mismatch="false"'`` gives the text "false", which
    ``bool()`` read as true: the check was off. Now true/false/yes/no/on/off/1/0 (any case), a
    bool or 0/1; anything else one BridgeError line naming the key."""
    from fedsim.flower.errors import BridgeError

    for off in ("false", "FALSE", "no", "0", "off", "", False, 0):
        with pytest.raises(BridgeError, match="this device runs"):
            fc.check_server_code(_cfg(OTHER), {"allow-version-mismatch": off})
    for on in ("true", "Yes", "1", "on", True, 1):
        assert common.run_config_bool({"allow-version-mismatch": on}, "allow-version-mismatch") is True
    for bad in ("maybe", 2, 0.5):
        with pytest.raises(BridgeError, match=r"^run config resume: expected true or false, got ") as e:
            common.run_config_bool({"resume": bad}, "resume")
        assert "\n" not in str(e.value)


def test_the_server_refuses_replies_of_devices_older_than_the_check(fed_scenario, tmp_path, monkeypatch):
    """A device with a fedsim from before the device-side check (it checks nothing and sends no
    code) trained unnoticed. Each reply now carries the device's code (``fedsim-code`` in its
    config): the server rejects a reply with none or with another, every round, in one line; the
    opt-out accepts them (the untampered run to the byte)."""
    from flwr.app import ConfigRecord

    control, _ = _run(fed_scenario, tmp_path, "control")
    monkeypatch.setattr(fc, "check_server_code", lambda *a: None)  # an older device: no check of its own
    for name, sent in (("none", ConfigRecord()), ("other", ConfigRecord({common.SERVER_CODE: OTHER}))):
        monkeypatch.setattr(fc, "device_code", lambda sent=sent: sent)
        recs, summary = _run(fed_scenario, tmp_path, name)
        assert summary["rounds_completed"] == 2
        device = "no code fingerprint" if name == "none" else f"code {OTHER[:12]}"
        for rec in recs:
            assert rec["received"] == 3 and rec["quorum"] is False and len(rec["rejected"]) == 3, rec
            for rej in rec["rejected"]:
                assert rej["reason"].startswith("the device runs ") and device in rej["reason"], rej
                assert f"this server fedsim {__version__}, code {code_fingerprint()[:12]}" in rej["reason"]
                assert "\n" not in rej["reason"]
        allowed, _ = _run(fed_scenario, tmp_path, name + "-allowed", {"allow-version-mismatch": True})
        assert allowed == control
