"""The Flower server takes ``fedsim run``'s callbacks (:mod:`fedsim.callbacks`): progress sees every
round's record, a Stop ends the rounds there (checkpointed as asked) and the run resumes from it
byte for byte, Ctrl-C's Stop ends in one line naming the resume."""

import pytest

pytest.importorskip("flwr")

from fedsim import rundir  # noqa: E402
from fedsim.callbacks import Callback, Progress, Stop, StopAfter  # noqa: E402
from fedsim.errors import RunInterruptedError  # noqa: E402
from fedsim.flower import common  # noqa: E402
from fedsim.flower.inprocess import run_in_process  # noqa: E402
from fedsim.rundirectory import RunDirectory  # noqa: E402
from fedsim.scenario import parse  # noqa: E402


@pytest.fixture()
def bridge(small_scenario):
    """``run(out, callbacks=(), **run_config)`` in-process: 5 rounds, a checkpoint every 2 (after rounds
    1 and 3), SGD with momentum (the devices' state must survive a resume)."""
    sc = common.bridge_scenario(parse(small_scenario(**{
        "mode": "federated", "rounds": 5, "topology.kind": "star", "peers.count": 4, "checkpoint.every": 2,
        "strategy.name": "median"})))
    nodes = [{"partition-id": i, "num-partitions": 4} for i in range(4)]

    def run(out, callbacks=(), **rc):
        return run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), **rc}, nodes, callbacks)

    run.sc = sc
    return run


class _Log(Callback):
    def __init__(self):
        self.seen = []

    def on_start(self, sc, start):
        self.seen.append(("start", start))

    def on_end(self, summary):
        self.seen.append(("end", None if summary is None else summary["rounds_completed"]))


def test_progress_sees_every_round_in_order(bridge, tmp_path):
    rounds, log = [], _Log()
    summary = bridge(tmp_path / "out", [log, Progress(lambda r, m: rounds.append((r, m["round"])))])
    assert rounds == [(r, r) for r in range(5)]
    assert log.seen == [("start", 0), ("end", 5)] and summary["rounds_completed"] == 5


def test_stop_after_then_resume_equals_the_uninterrupted_run(bridge, tmp_path):
    """StopAfter(2, checkpoint=True): round 2 is not a periodic checkpoint round, so the stop saves
    one; the lock is released, no summary; the resume runs rounds 3, 4 and the files equal a whole run's."""
    bridge(tmp_path / "whole")
    out, log = tmp_path / "cut", _Log()
    assert bridge(out, [log, StopAfter(2, checkpoint=True)]) == {"stopped_after": 2}
    assert log.seen == [("start", 0), ("end", None)]
    assert len((out / rundir.METRICS).read_text().splitlines()) == 3
    assert rundir.read_checkpoint_meta(out / rundir.CHECKPOINT)["round"] == 2
    assert not (out / rundir.SUMMARY).exists()
    RunDirectory(out, bridge.sc).lock.acquire()  # released (the object is dropped at once, and its lock)
    resumed = _Log()
    assert bridge(out, [resumed], resume=True)["rounds_completed"] == 5
    assert resumed.seen == [("start", 3), ("end", 5)]
    assert (out / rundir.METRICS).read_bytes() == (tmp_path / "whole" / rundir.METRICS).read_bytes()


def test_a_stop_without_checkpoint_leaves_the_periodic_one(bridge, tmp_path):
    out = tmp_path / "out"
    assert bridge(out, [StopAfter(2)]) == {"stopped_after": 2}
    assert rundir.read_checkpoint_meta(out / rundir.CHECKPOINT)["round"] == 1  # as a kill would


def test_ctrl_c_ends_in_one_line_naming_the_resume(bridge, tmp_path):
    class CtrlC(Callback):
        def on_round(self, record):
            return Stop("interrupted", checkpoint=True, interrupt=True) if record.round == 0 else None

    out = tmp_path / "out"
    with pytest.raises(RunInterruptedError) as e:
        bridge(out, [CtrlC()])
    msg = str(e.value)
    assert "\n" not in msg and "interrupted after round 0; checkpoint saved." in msg and "resume" in msg
    assert rundir.read_checkpoint_meta(out / rundir.CHECKPOINT)["round"] == 0
    assert bridge(out, resume=True)["rounds_completed"] == 5
