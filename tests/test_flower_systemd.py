"""The systemd unit shipped for a device (fedsim/flower/fedsim-node.service): the one docs/flower.md
shows, read by fedsim.flower.unit, accepted by `fedsim flower client`, and verified by systemd's own
`systemd-analyze verify` where that tool runs. The restart itself (SIGKILL, Restart=always,
rejoin) is the loopback test `test_flower_loopback.py::test_systemd_unit_restarts_a_killed_node`."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedsim.flower.unit import UNIT_FILE, UnitError, parse_service, read_unit, replace_options

ROOT = Path(__file__).resolve().parent.parent


def test_the_doc_shows_the_shipped_unit():
    doc = (ROOT / "docs" / "flower.md").read_text()
    blocks = [b for b in re.findall(r"```ini\n(.*?)```", doc, re.S) if "fedsim-node.service" in b]
    assert blocks == [read_unit()]
    assert "fedsim/flower/fedsim-node.service" in doc


def test_the_unit_restarts_the_device_client_always():
    svc = parse_service(read_unit())
    assert svc.restart == "always" and svc.restart_sec == 10.0 and svc.user == "pi"
    assert svc.exec_start[0] == "/home/pi/fedsim/bin/fedsim" and svc.exec_start[1:3] == ["flower", "client"]
    assert "\\" not in " ".join(svc.exec_start)  # the continuation line is joined
    assert svc.exec_start[-2:] == ["--max-wait-time", "600"]


def test_the_unit_command_is_accepted_by_fedsim_flower_client(tmp_path):
    from fedsim.cli import main

    pytest.importorskip("flwr")
    ca, key = tmp_path / "ca.crt", tmp_path / "node0"
    ca.write_text("x")
    key.write_text("x")
    argv = replace_options(parse_service(read_unit()).exec_start,
                           {"--root-certificates": str(ca), "--auth-key": str(key)})
    r = CliRunner().invoke(main, [*argv[1:], "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "fedsim.flower.launch supernode --superlink 192.168.1.10:8000" in r.output
    assert "partition-id=0 num-partitions=4" in r.output and "--max-wait-time 600.0" in r.output


@pytest.mark.parametrize("edit, error", [
    (("ExecStart=/home", "ExecStart=-/home"), "prefix '-'"),
    (("--partition-id 0", "--partition-id $ID"), r"\$VARIABLES"),
    (("/home/pi/ca.crt", "%h/ca.crt"), "specifiers"),
    (("ExecStart=/home/pi/fedsim/bin/fedsim", "ExecStart=fedsim"), "absolute path"),
    (("Restart=always", "Restart=sometimes"), "Restart=sometimes: expected one of"),
    (("RestartSec=10", "RestartSec=ten"), "RestartSec=ten"),
    (("RestartSec=10", "ExecStart=/bin/true"), "one ExecStart=.*found 2"),
    (("User=pi", "User pi"), "not a 'Key=value' line"),
])
def test_the_reader_refuses_what_it_does_not_implement(edit, error):
    text = read_unit()
    assert edit[0] in text
    with pytest.raises(UnitError, match=error) as e:
        parse_service(text.replace(edit[0], edit[1], 1))
    assert "\n" not in str(e.value)


def test_the_reader_follows_systemd_defaults_and_time_spans():
    svc = parse_service("[Unit]\nRestart=always\nRestartSec=9\n[Service]\nExecStart=/bin/sleep 1\n"
                        "[Install]\nExecStart=/bin/false\n")  # only [Service] counts
    assert svc.restart == "no" and svc.restart_sec == pytest.approx(0.1) and svc.user is None
    assert svc.exec_start == ["/bin/sleep", "1"]
    for span, s in (("500ms", 0.5), ("1min", 60.0), ("7s", 7.0), ("2.5", 2.5)):
        assert parse_service(f"[Service]\nExecStart=/bin/sleep 1\nRestartSec={span}\n").restart_sec == s
    with pytest.raises(UnitError, match="has no --port"):
        replace_options(["/bin/x", "--superlink", "a"], {"--port": "1"})


def test_systemd_analyze_verifies_the_unit(tmp_path):
    """systemd's own checker, on the shipped unit with ExecStart's program pointed at this
    environment's `fedsim` (verify refuses a program that does not exist)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    exe = Path(sys.executable).parent / "fedsim"
    if not exe.exists():
        pytest.skip(f"no fedsim console script next to {sys.executable}")
    unit = tmp_path / UNIT_FILE.name
    unit.write_text(read_unit().replace("/home/pi/fedsim/bin/fedsim", str(exe)))
    bad = tmp_path / "bad" / UNIT_FILE.name
    bad.parent.mkdir()
    bad.write_text(read_unit().replace("Restart=always", "Restart=sometimes").replace("/home/pi/fedsim/bin/fedsim",
                                                                                       str(exe)))
    try:
        ok = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=120)
        broken = subprocess.run([tool, "verify", str(bad)], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"systemd-analyze verify does not run here: {e}")
    if "Failed to" in ok.stderr and UNIT_FILE.name not in ok.stderr:
        pytest.skip(f"systemd-analyze verify does not run here: {ok.stderr.strip()[:200]}")
    ours = [x for x in (ok.stdout + ok.stderr).splitlines() if UNIT_FILE.name in x]
    assert ok.returncode == 0 and ours == [], ok.stdout + ok.stderr
    assert UNIT_FILE.name in broken.stderr and "restart" in broken.stderr.lower()  # the checker does read our unit
