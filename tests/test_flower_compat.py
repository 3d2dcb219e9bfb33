"""The guard on the bridge's patches of Flower internals (fedsim.flower.compat): it passes on the
pinned flwr, and another flwr version, or internals that changed under the same version, fail at
every place a patch is applied, with one line, before anything is patched or started."""

import os
from pathlib import Path

import pytest
import tomllib

flwr = pytest.importorskip("flwr")

from fedsim.flower import compat, grid, launch, worker  # noqa: E402
from fedsim.flower.compat import FLWR_VERSION, PATCHES, FlowerInternalsError, check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_the_patches_fit_the_installed_flower():
    assert flwr.__version__ == FLWR_VERSION, "the environment must hold the bridge's pin"
    for patch in PATCHES:
        check(patch)


def test_the_pin_is_the_guarded_version():
    from fedsim.flower.project import FLWR_REQUIREMENT

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["client"] == [FLWR_REQUIREMENT] == [f"flwr=={FLWR_VERSION}"]


def test_another_flower_version_is_refused_where_each_patch_is_applied(monkeypatch):
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal

    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    for patch in PATCHES:
        with pytest.raises(FlowerInternalsError) as e:
            check(patch)
        msg = _one_line(e)
        assert "flwr 1.42.0 is installed" in msg and f"written for flwr {FLWR_VERSION}" in msg
        assert f"install flwr=={FLWR_VERSION}" in msg and PATCHES[patch][0] in msg
    original = http_grid.pull_objects
    with pytest.raises(FlowerInternalsError, match="pull_objects"), grid.bounded_object_pulls(5.0):
        pass
    assert http_grid.pull_objects is original  # nothing was wrapped
    with pytest.raises(FlowerInternalsError, match="1.42.0"):
        grid.PollingGrid(object(), 0.25)  # the ServerApp fails at its start, not in a round
    with pytest.raises(FlowerInternalsError, match="copies Flower's pull_task_input"):
        worker.pull_task_input(None, lambda: False)  # before it touches the Runtime API
    with pytest.raises(SystemExit) as ex:
        worker.main(["--runtime-api-address", "127.0.0.1:1"])
    assert str(ex.value.code).startswith("fedsim worker: ") and "1.42.0" in str(ex.value.code)
    with pytest.raises(FlowerInternalsError, match="get_middleware"):
        launch.install_gate("127.0.0.1")
    sleeper = start_client_internal.time
    with pytest.raises(FlowerInternalsError, match="time module"):
        launch.cap_supernode_sleeps(0.1)
    assert start_client_internal.time is sleeper
    path = os.environ.get("PATH")
    for argv, patch in ((["superlink", "--insecure"], "get_middleware"),
                        (["supernode", "--insecure", "--warm", "--superlink", "127.0.0.1:1"], "pull_task_input"),
                        (["supernode", "--insecure", launch.POLL_OPTION, "0.2"], "SuperNode loop")):
        with pytest.raises(SystemExit) as ex:
            launch.main(argv)  # exits before Flower is started (nothing listens on port 1)
        code = str(ex.value.code)
        assert code.startswith("fedsim: ") and "\n" not in code and patch in code, code
    assert os.environ.get("PATH") == path  # before the launcher touched anything


def test_changed_internals_under_the_same_version_are_refused(monkeypatch):
    from flwr.superlink import extensions
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    with monkeypatch.context() as m:
        m.setattr(http_grid, "pull_objects", lambda object_ids, pull_object_fn: {})
        with pytest.raises(FlowerInternalsError) as e:
            check("bounded_object_pulls")
        assert "pull_objects has no parameter max_time" in _one_line(e)
    with monkeypatch.context() as m:
        m.setattr(http_grid.HttpGrid, "pull_messages", lambda self, message_ids: [])
        with pytest.raises(FlowerInternalsError, match="no longer calls pull_objects"):
            check("bounded_object_pulls")
    with monkeypatch.context() as m:
        def pull_task_input(client):  # Flower's function, rewritten
            return client.PullTaskInput()

        m.setattr(run_clientapp, "pull_task_input", pull_task_input)
        with pytest.raises(FlowerInternalsError, match="pull_task_input, which fedsim copies, has changed"):
            check("pull_task_input")
    with monkeypatch.context() as m:
        m.setattr(run_clientapp, "push_task_output", lambda client, context, status: None)
        with pytest.raises(FlowerInternalsError, match="push_task_output has no parameter sub_status"):
            check("pull_task_input")
    with monkeypatch.context() as m:
        m.delattr(extensions, "get_middleware")
        with pytest.raises(FlowerInternalsError) as e:
            check("superlink_middleware")
        assert "AttributeError" in _one_line(e)
    with monkeypatch.context() as m:
        m.setattr(start_client_internal, "time", object())
        with pytest.raises(FlowerInternalsError, match="no longer sleeps with the time module"):
            check("supernode_sleeps")
    for patch in PATCHES:  # as it was
        check(patch)
    with pytest.raises(ValueError, match="unknown patch 'nope'"):
        check("nope")


def test_require_checks_once_per_version(monkeypatch):
    calls = []
    what, probe = PATCHES["supernode_sleeps"]
    monkeypatch.setitem(PATCHES, "supernode_sleeps", (what, lambda: calls.append(1) or probe()))
    monkeypatch.setattr(compat, "_VERIFIED", set())
    compat.require("supernode_sleeps")
    compat.require("supernode_sleeps")
    assert calls == [1]
    monkeypatch.setattr(flwr, "__version__", "1.42.0")
    with pytest.raises(FlowerInternalsError):
        compat.require("supernode_sleeps")  # a new version is checked again
