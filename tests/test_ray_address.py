"""A Ray cluster address with no live cluster behind it is a one-line error within seconds, before a
run writes anything (:mod:`fedsim.ray_address`, :func:`fedsim.backend.cluster_address`); a live one
is connected to as Ray resolves it.

The fast tests stand sockets on loopback in for clusters (a closed port: a dead GCS; a listener whose
backlog is full: an address that never answers; a listener: a live port) and a function for Ray's
resolution and GCS probe. The end-to-end ones run ``fedsim run`` / ``fedsim.run`` against a closed
port (Ray imported, none started). A real stale ``ray start --head`` is in tests/test_cluster.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fedsim import ray_address
from fedsim.ray_lean import RayStartError

HINT = "start one with `ray start --head`, or drop --address (engine.address) to let fedsim start its own Ray"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def listener():
    """A live TCP port on loopback (accepts, never answers)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture()
def silent():
    """A loopback port whose accept queue is full: a connection there hangs (as a host that is gone)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    held = socket.create_connection(("127.0.0.1", port), timeout=2)  # fills the queue
    yield port
    held.close()
    s.close()


def _as_given(address: str) -> str:
    return address


def _no_probe_expected(address: str, timeout: float) -> None:
    raise AssertionError("the GCS probe ran")


@pytest.fixture()
def no_ray_address(monkeypatch):
    monkeypatch.setenv(ray_address.RAY_ADDRESS_ENV, "")
    monkeypatch.delenv(ray_address.RAY_ADDRESS_ENV)


def test_a_dead_address_is_one_line_within_a_second(tmp_path) -> None:
    port = _closed_port()
    t = time.monotonic()
    with pytest.raises(RayStartError) as e:
        ray_address.live_address(f"127.0.0.1:{port}", _as_given, tmp_path / "ray_current_cluster", _no_probe_expected)
    assert time.monotonic() - t < 1.0
    assert str(e.value) == f"no live Ray cluster at 127.0.0.1:{port}: connection refused; {HINT}"


def test_a_live_gcs_is_returned_as_ray_resolves_it(tmp_path, listener) -> None:
    """Also the control of the test above: a port that accepts, whose GCS answers, is no error."""
    probed = []
    resolved = ray_address.live_address(
        f"localhost:{listener}",
        lambda a: a.replace("localhost", "127.0.0.1"),  # as Ray's canonicalisation rewrites a host
        tmp_path / "ray_current_cluster",
        lambda address, timeout: probed.append((address, timeout)),
    )
    assert resolved == f"127.0.0.1:{listener}"
    assert probed == [(resolved, ray_address.GCS_TIMEOUT_S)]


def test_a_port_where_no_gcs_answers_is_an_error(tmp_path, listener) -> None:
    def no_gcs(address: str, timeout: float) -> None:
        raise RuntimeError("Timed out while waiting for GCS to become available.\nmore")

    with pytest.raises(RayStartError) as e:
        ray_address.live_address(f"127.0.0.1:{listener}", _as_given, tmp_path / "x", no_gcs)
    assert str(e.value) == (
        f"no live Ray cluster at 127.0.0.1:{listener}: the port accepts connections but no Ray GCS answered "
        f"within {ray_address.GCS_TIMEOUT_S:g} s (Timed out while waiting for GCS to become available.); {HINT}"
    )


def test_an_address_that_never_answers_fails_within_the_connect_timeout(silent) -> None:
    """Ray would retry it for minutes; the TCP check gives up after ``connect_timeout``."""
    out: list[BaseException | None] = []

    def check() -> None:
        try:
            ray_address.check_live(f"127.0.0.1:{silent}", "", None, connect_timeout=0.5)
            out.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            out.append(e)

    t = time.monotonic()
    th = threading.Thread(target=check, daemon=True)
    th.start()
    th.join(10)
    assert out, "the check did not return within 10 s"
    assert time.monotonic() - t < 3
    assert isinstance(out[0], RayStartError) and str(out[0]).startswith(
        f"no live Ray cluster at 127.0.0.1:{silent}: no answer;"
    )


def _recorded(tmp_path: Path, port: int, session_port: int | None = None) -> tuple[Path, Path]:
    """A Ray temp dir as a ``ray start --head`` leaves it: ray_current_cluster, the head's session
    folder with its GCS port file, another session and ``session_latest``."""
    temp = tmp_path / "ray"
    session = temp / "session_2026-01-01_00-00-00_000000_42"
    other = temp / "session_2026-01-02_00-00-00_000000_43"
    for d in (session, other):
        d.mkdir(parents=True)
    (session / "gcs_server_port_abc").write_text(str(port if session_port is None else session_port))
    (other / "gcs_server_port_def").write_text(str(port + 1))
    (temp / "session_latest").symlink_to(other)
    (temp / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
    return temp / "ray_current_cluster", session


def _ray_like(address_file: Path):
    """Ray's resolution for the stand-ins: ``auto`` is the recorded address."""
    return lambda a: address_file.read_text().strip() if a == "auto" else a


def test_auto_names_where_it_found_a_dead_cluster_and_its_session(tmp_path, no_ray_address) -> None:
    port = _closed_port()
    address_file, session = _recorded(tmp_path, port)
    with pytest.raises(RayStartError) as e:
        ray_address.live_address("auto", _ray_like(address_file), address_file, _no_probe_expected)
    assert str(e.value) == (
        f"no live Ray cluster at 127.0.0.1:{port} (--address auto, recorded in {address_file} by the last "
        f"`ray start --head`, session folder {session}): connection refused; {HINT}"
    )
    assert "\n" not in str(e.value)


def test_auto_names_no_session_folder_it_cannot_tell(tmp_path, no_ray_address) -> None:
    port = _closed_port()
    address_file, _ = _recorded(tmp_path, port, session_port=port + 7)
    with pytest.raises(RayStartError, match=r"by the last `ray start --head`\): connection refused"):
        ray_address.live_address("auto", _ray_like(address_file), address_file, _no_probe_expected)


def test_auto_takes_ray_address_first(tmp_path, monkeypatch) -> None:
    port = _closed_port()
    address_file, _ = _recorded(tmp_path, port + 1 if port < 65535 else port - 1)
    monkeypatch.setenv(ray_address.RAY_ADDRESS_ENV, f"127.0.0.1:{port}")
    asked = []
    with pytest.raises(RayStartError) as e:
        ray_address.live_address("auto", lambda a: asked.append(a) or a, address_file, _no_probe_expected)
    assert asked == [f"127.0.0.1:{port}"]
    assert str(e.value).startswith(f"no live Ray cluster at 127.0.0.1:{port} (--address auto, from RAY_ADDRESS): ")


def test_auto_on_a_raylet_of_this_machine(tmp_path, no_ray_address, listener) -> None:
    """Ray's ``auto`` prefers the one raylet running here to the recorded address: so does the message."""
    address_file, _ = _recorded(tmp_path, _closed_port())
    here = f"127.0.0.1:{listener}"
    resolved, origin = ray_address.resolve("auto", lambda a: here if a == "auto" else a, address_file)
    assert (resolved, origin) == (here, "--address auto, the GCS of a raylet running on this machine")


def test_auto_with_no_cluster_anywhere(tmp_path, no_ray_address) -> None:
    def none_found(address: str) -> str:
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")

    with pytest.raises(RayStartError) as e:
        ray_address.live_address("auto", none_found, tmp_path / "ray_current_cluster", _no_probe_expected)
    assert str(e.value) == (
        f"--address auto: no Ray cluster found (no RAY_ADDRESS, no address in {tmp_path / 'ray_current_cluster'}, "
        f"no raylet running on this machine); {HINT}"
    )


@pytest.mark.parametrize("address", ["localhost", "host:port", ":6379", "ray://nohost"])
def test_a_malformed_address_is_named(tmp_path, address) -> None:
    with pytest.raises(RayStartError, match=r"^Ray cluster address .*: expected HOST:PORT, ray://HOST:PORT or auto$"):
        ray_address.live_address(address, _as_given, tmp_path / "x", _no_probe_expected)


def test_a_ray_client_address_gets_the_tcp_check_only(tmp_path, listener) -> None:
    address = f"ray://127.0.0.1:{listener}"
    assert ray_address.live_address(address, _no_probe_expected, tmp_path / "x", _no_probe_expected) == address
    dead = f"ray://127.0.0.1:{_closed_port()}"
    with pytest.raises(
        RayStartError, match=r"^no live Ray Client server at ray://127\.0\.0\.1:\d+: connection refused"
    ):
        ray_address.live_address(dead, _no_probe_expected, tmp_path / "x", _no_probe_expected)


def test_another_scheme_is_passed_to_ray_as_given(tmp_path) -> None:
    assert ray_address.live_address("anyscale://x", _no_probe_expected, tmp_path / "x", None) == "anyscale://x"


# ---------------------------------------------------------------- end to end (Ray imported, none started)


def _scenario(tmp_path: Path, small_scenario, **over) -> Path:
    path = tmp_path / "sc.yaml"
    path.write_text(yaml.safe_dump(small_scenario(**{"engine.backend": "ray", **over})))
    return path


def test_fedsim_run_on_a_dead_address_writes_nothing(tmp_path, small_scenario) -> None:
    pytest.importorskip("ray")
    port = _closed_port()
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("RAY_ADDRESS", None)
    t = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim",
            "run",
            str(_scenario(tmp_path, small_scenario)),
            "--address",
            f"127.0.0.1:{port}",
            "--out",
            str(out),
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    took = time.monotonic() - t
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: no live Ray cluster at "), r.stderr[-2000:]
    assert f"127.0.0.1:{port}" in lines[0] and lines[0].endswith(f": connection refused; {HINT}"), lines[0]
    assert not out.exists()
    assert took < 60, took  # seconds (Python, torch and Ray imports), not Ray's minutes of retries


def test_the_python_api_checks_the_address_before_the_folder(tmp_path, small_scenario) -> None:
    pytest.importorskip("ray")
    import fedsim

    out = tmp_path / "out"
    with pytest.raises(RayStartError, match=r"^no live Ray cluster at .*: connection refused; "):
        fedsim.run(_scenario(tmp_path, small_scenario), {"engine.address": f"127.0.0.1:{_closed_port()}"}, out)
    assert not out.exists()


def test_a_sweep_on_a_dead_address_touches_no_folder(tmp_path, small_scenario) -> None:
    pytest.importorskip("ray")
    from fedsim.sweep_execute import execute_sweep
    from fedsim.sweep_plan import plan_sweep

    plan = plan_sweep(_scenario(tmp_path, small_scenario), {"seed": [0, 1]}, {}, tmp_path / "sw", False, True)
    with pytest.raises(RayStartError, match=r"^no live Ray cluster at "):
        execute_sweep(plan, address=f"127.0.0.1:{_closed_port()}")
    assert not (tmp_path / "sw").exists()


def test_an_in_process_run_imports_no_ray(tmp_path, small_scenario) -> None:
    code = (
        "import sys, yaml, fedsim; "
        f"fedsim.run(yaml.safe_load(open({str(_scenario(tmp_path, small_scenario))!r})), "
        f"{{'engine.backend': 'local', 'rounds': 1}}, {str(tmp_path / 'out')!r}); "
        "print(int('ray' in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "0"


@pytest.mark.slow
def test_rays_gcs_probe_gives_up_on_a_port_that_never_answers(listener) -> None:
    """The real probe (Ray's standalone GCS client) against a port that accepts and says nothing:
    an error after its timeout plus the client's own 5 s connect wait, not Ray's minutes of retries."""
    pytest.importorskip("ray")
    from fedsim import backend

    t = time.monotonic()
    with pytest.raises(Exception, match="GCS"):
        backend._gcs_probe(f"127.0.0.1:{listener}", 1.0)
    assert time.monotonic() - t < 5 + 1 + 4  # 4 s of slack for a loaded machine


def test_an_address_ray_rewrites_is_named_as_given_too(tmp_path) -> None:
    port = _closed_port()
    with pytest.raises(RayStartError) as e:
        ray_address.live_address(
            f"localhost:{port}", lambda a: a.replace("localhost", "127.0.0.1"), tmp_path / "x", _no_probe_expected
        )
    assert str(e.value) == f"no live Ray cluster at 127.0.0.1:{port} (localhost:{port} as Ray resolves it): " + (
        f"connection refused; {HINT}"
    )


def test_a_resume_on_a_dead_address_changes_nothing(tmp_path, small_scenario) -> None:
    """``--resume DIR --address ...``: ``init_ray``'s check fails before the resume cuts the files back
    (bounded: Ray's own retries would outlast the subprocess's timeout)."""
    pytest.importorskip("ray")
    from fedsim.runner import Run
    from fedsim.scenario import parse

    run_dir = tmp_path / "run"
    r = Run(parse(small_scenario(**{"rounds": 4, "checkpoint.every": 1})), run_dir)
    r.create_dir()
    assert r.execute(stop_after=2) == {"stopped_after": 2}
    before = {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()}
    assert "checkpoint.pt" in before and "metrics.jsonl" in before  # control: a run to resume
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("RAY_ADDRESS", None)
    argv = ["run", "--resume", str(run_dir), "-q", "--set", "engine.backend=ray", "--address"]
    res = subprocess.run(
        [sys.executable, "-m", "fedsim", *argv, f"127.0.0.1:{_closed_port()}"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 1 and "Error: no live Ray cluster at " in res.stderr, res.stderr[-2000:]
    after = {f.name: f.read_bytes() for f in run_dir.iterdir() if f.is_file()}
    assert sorted(after) == sorted(before)
    assert [n for n in before if after[n] != before[n]] == [".lock"]  # the lock names its last holder
