"""The Flower server's output directory is a fedsim run directory (:class:`fedsim.rundirectory.RunDirectory`):
a directory fedsim did not make is refused in one line and left as it was, whatever the run config
says; one held by a live run is refused; a finished run leaves it unlocked and marked."""

import pytest

pytest.importorskip("flwr")

from fedsim import rundir  # noqa: E402
from fedsim.errors import FedsimError, RunDirExistsError  # noqa: E402
from fedsim.flower import common  # noqa: E402
from fedsim.flower.inprocess import run_in_process  # noqa: E402
from fedsim.rundirectory import RunDirectory  # noqa: E402
from fedsim.scenario import parse  # noqa: E402


@pytest.fixture()
def bridge(small_scenario):
    """``run(out, **run_config)``: the ServerApp and 2 ClientApps in-process, 1 round; ``sc``: the scenario."""
    sc = common.bridge_scenario(parse(small_scenario(**{"mode": "federated", "rounds": 1, "topology.kind": "star",
                                                        "peers.count": 2})))
    nodes = [{"partition-id": i, "num-partitions": 2} for i in range(2)]

    def run(out, **rc):
        return run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), **rc}, nodes)

    run.sc = sc
    return run


def _snapshot(d):
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(d.rglob("*"))}


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert isinstance(e.value, FedsimError) and "\n" not in msg
    return msg


@pytest.mark.parametrize("rc", [{}, {"overwrite": True}, {"resume": True}], ids=["new", "overwrite", "resume"])
def test_a_directory_fedsim_did_not_make_is_refused_and_untouched(bridge, tmp_path, rc):
    """A non-empty directory without fedsim's marker (a user's, or one holding another program's
    metrics.jsonl) is refused in one line before any work; every file in it keeps its bytes and
    times, and no marker or lock appears (``overwrite`` never clears it)."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my thesis\n")
    (mine / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (mine / rundir.METRICS).write_text("")
    before = _snapshot(mine)
    with pytest.raises(FedsimError) as e:
        bridge(mine, **rc)
    msg = _one_line(e)
    assert "not a fedsim run directory" in msg and str(mine) in msg
    assert _snapshot(mine) == before


@pytest.mark.parametrize("resume", [False, True], ids=["new", "resume"])
def test_a_directory_held_by_a_live_run_is_refused(bridge, tmp_path, resume):
    """A second server on a directory whose lock a live run holds stops at once, in one line."""
    out = tmp_path / "out"
    live = RunDirectory(out, bridge.sc)
    live.create()  # a live fedsim run: marker, scenario, lock held
    try:
        before = _snapshot(out)
        with pytest.raises(rundir.RunLockedError) as e:
            bridge(out, resume=resume, overwrite=True)
        assert "in use by another fedsim run" in _one_line(e)
        assert _snapshot(out) == before
    finally:
        live.lock.release()


def test_a_finished_run_is_marked_and_unlocked(bridge, tmp_path):
    """The server's directory carries fedsim's marker (so ``overwrite`` may clear it later) and its
    lock is free when the run ends: another run can take it; a rerun without overwrite is refused."""
    out = tmp_path / "out"
    bridge(out)
    assert rundir.is_run_dir(out) and (out / rundir.MARKER).is_file() and (out / rundir.METRICS).read_text()
    d = RunDirectory(out, bridge.sc)
    d.lock.acquire()  # free: the finished server released it
    d.lock.release()
    with pytest.raises(RunDirExistsError) as e:
        bridge(out)
    assert "overwrite=true" in _one_line(e)
    bridge(out, overwrite=True)


def test_the_lock_is_held_while_the_rounds_run(bridge, tmp_path, monkeypatch):
    """While the server's rounds run, its directory is locked: another run or resume is refused."""
    from fedsim.flower import server

    out = tmp_path / "out"
    real = server.FedsimStrategy.configure_train
    refused = []

    def try_to_take_it(self, *a, **k):
        with pytest.raises(rundir.RunLockedError) as e:
            RunDirectory(out, bridge.sc).lock.acquire()
        refused.append(_one_line(e))
        return real(self, *a, **k)

    monkeypatch.setattr(server.FedsimStrategy, "configure_train", try_to_take_it)
    bridge(out)
    assert refused and all("in use by another fedsim run" in m for m in refused)


def test_the_demo_refuses_a_foreign_output_directory_before_starting(bridge, tmp_path):
    """``fedsim flower demo --workdir WD`` whose ``WD/out`` is a directory fedsim did not make stops
    in one line before any process starts (the same refusal, :meth:`ServerFiles.refuse_new`)."""
    from click.testing import CliRunner

    from fedsim.flower.cli import flower

    scen = tmp_path / "s.yaml"
    scen.write_text(common.scenario_yaml(bridge.sc))
    out = tmp_path / "wd" / "out"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    before = _snapshot(tmp_path / "wd")
    wd = str(tmp_path / "wd")
    r = CliRunner().invoke(flower, ["demo", str(scen), "--in-process", "--overwrite", "--workdir", wd])
    assert r.exit_code != 0 and "not a fedsim run directory" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert _snapshot(tmp_path / "wd") == before


def test_the_demo_resumes_its_own_interrupted_run(small_scenario, tmp_path):
    """``fedsim flower demo --workdir WD --run-config resume=true`` continues the run in ``WD/out``
    from its checkpoint (the new-run refusals, an earlier run's metrics among them, are not a
    resume's): the resumed metrics are the uninterrupted run's."""
    from click.testing import CliRunner

    from fedsim.flower.cli import flower

    sc = common.bridge_scenario(parse(small_scenario(**{"mode": "federated", "rounds": 3, "topology.kind": "star",
                                                        "peers.count": 2, "checkpoint.every": 1})))
    scen = tmp_path / "s.yaml"
    scen.write_text(common.scenario_yaml(sc))
    wd = tmp_path / "wd"
    args = ["demo", str(scen), "--in-process", "--workdir", str(wd)]
    r = CliRunner().invoke(flower, args)
    assert r.exit_code == 0, r.output
    out = wd / "out"
    whole = (out / rundir.METRICS).read_bytes()
    (out / rundir.SUMMARY).unlink()  # as if stopped after round 1's checkpoint
    (out / "final_global.pt").unlink()
    r = CliRunner().invoke(flower, [*args, "--run-config", "resume=true"])
    assert r.exit_code == 0, r.output
    assert (out / rundir.METRICS).read_bytes() == whole and (out / rundir.SUMMARY).exists()


@pytest.mark.parametrize("rc", [{}, {"overwrite": True}], ids=["new", "overwrite"])
def test_the_foreign_refusal_names_the_bridges_option(bridge, tmp_path, rc):
    """The bridge has no ``--out``: its refusal of a directory fedsim did not make names the run
    config's ``output-dir`` (and the demo's ``--workdir``), as its other refusals do."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my thesis\n")
    with pytest.raises(RunDirExistsError) as e:
        bridge(mine, **rc)
    msg = _one_line(e)
    assert "not a fedsim run directory" in msg and "--out" not in msg and "output-dir" in msg
