"""The round loop's contract with callbacks (fedsim.callbacks, fedsim.simulation.RoundRecord):
every round's record reaches every callback, in order, after its metrics line is written; a
callback's Stop, stop-after and Ctrl-C leave a run that resumes to the bytes of an uninterrupted
one; the Python API's history is the records the run wrote."""

import json
import os
import signal

import pytest

import fedsim
from fedsim.callbacks import Callback, Progress, Stop, StopAfter
from fedsim.errors import RunInterruptedError
from fedsim.rundir import metrics_line
from fedsim.runner import Run
from fedsim.scenario import parse
from fedsim.simulation import PHASES, RoundRecord

CKPT = {"rounds": 8, "checkpoint.every": 3}  # periodic checkpoints after rounds 2 and 5


class Recorder(Callback):
    """Keeps what it is shown, and checks the round's line is on disk when it is shown."""

    def __init__(self, metrics_path=None):
        self.metrics_path = metrics_path
        self.started, self.records, self.ended = [], [], []

    def on_start(self, sc, start):
        self.started.append((sc.name, start))

    def on_round(self, record):
        assert isinstance(record, RoundRecord)
        if self.metrics_path is not None:
            lines = self.metrics_path.read_bytes().splitlines(keepends=True)
            assert len(lines) == record.round + 1 and lines[-1] == metrics_line(record.metrics)
        self.records.append(record)

    def on_end(self, summary):
        self.ended.append(summary)


class StopAt(Callback):
    def __init__(self, round_, **kw):
        self.round, self.kw = round_, kw

    def on_round(self, record):
        return Stop(**self.kw) if record.round == self.round else None


def _full(small_scenario, tmp_path, **over):
    return fedsim.run(small_scenario(name="full", **(CKPT | over)), out=tmp_path / "full")


def test_a_callback_sees_every_rounds_record_in_order(small_scenario, tmp_path):
    out = tmp_path / "seen"
    rec = Recorder(out / "metrics.jsonl")
    calls = []
    r = fedsim.run(small_scenario(rounds=5, **{"evaluation.every": 2}), out=out, callbacks=[rec],
                   progress=lambda i, m: calls.append(i))
    assert [x.round for x in rec.records] == [0, 1, 2, 3, 4] == calls
    assert rec.started == [("t", 0)] and rec.ended == [r.summary]
    lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert [metrics_line(x.metrics) for x in rec.records] == lines
    assert r.history == [json.loads(x) for x in lines] and r.records == rec.records
    assert [x.evaluated for x in rec.records] == [False, True, False, True, True]  # every 2, and the last
    for x in rec.records:
        assert set(x.phases) == set(PHASES) and all(v >= 0 for v in x.phases.values())
        assert (x.phases["evaluate"] > 0) == x.evaluated
    timings = [json.loads(x) for x in (out / "timings.jsonl").read_text().splitlines()]
    assert [t["seconds"] for t in timings] == [round(x.seconds, 4) for x in rec.records]
    assert [t["train"] for t in timings] == [round(x.phases["train"], 4) for x in rec.records]


def test_a_callback_stop_checkpoints_and_resumes_to_the_uninterrupted_bytes(small_scenario, tmp_path):
    full = _full(small_scenario, tmp_path)
    later = Recorder()
    part = fedsim.run(small_scenario(name="part", **CKPT), out=tmp_path / "part", callbacks=[StopAt(4), later])
    assert not part.complete and part.summary is None
    assert [h["round"] for h in part.history] == [0, 1, 2, 3, 4]
    assert [x.round for x in later.records] == [0, 1, 2, 3, 4]  # the callback after the stopping one saw round 4
    assert later.ended == [None]
    resumed = fedsim.resume(tmp_path / "part")
    assert (tmp_path / "part" / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()
    assert resumed.summary["resumed_after_round"] == 4  # its own checkpoint, not the periodic one (round 2)
    assert [x.round for x in resumed.records] == [5, 6, 7] and resumed.history == full.history


def test_stop_after_leaves_a_run_that_resumes_from_its_last_checkpoint(small_scenario, tmp_path):
    full = _full(small_scenario, tmp_path)
    part = fedsim.run(small_scenario(name="part", **CKPT), out=tmp_path / "part", callbacks=[StopAfter(4)])
    assert len(part.history) == 5 and not part.complete
    resumed = fedsim.resume(tmp_path / "part")
    assert resumed.history == full.history
    assert (tmp_path / "part" / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()
    assert resumed.summary["resumed_after_round"] == 2  # as after a kill: the periodic checkpoint


def test_ctrl_c_is_a_callback_that_checkpoints_and_names_the_resume(small_scenario, tmp_path):
    full = _full(small_scenario, tmp_path)
    before = signal.getsignal(signal.SIGINT)

    class CtrlC(Callback):
        def on_round(self, record):
            if record.round == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the run's handler notes it; the round's callbacks go on

    r = Run(parse(small_scenario(name="part", **CKPT)), tmp_path / "part")
    r.create_dir()
    with pytest.raises(RunInterruptedError, match="interrupted after round 3; checkpoint saved.*--resume"):
        r.execute(callbacks=[CtrlC()])
    assert r.interrupted and signal.getsignal(signal.SIGINT) is before
    summary = Run(r.sc, r.dir).execute(resume=True)
    assert summary["resumed_after_round"] == 3
    assert (r.dir / "metrics.jsonl").read_bytes() == (full.dir / "metrics.jsonl").read_bytes()


def test_a_stop_without_checkpoint_that_interrupts_says_so(small_scenario, tmp_path):
    r = Run(parse(small_scenario(name="x", **CKPT)), tmp_path / "x")
    r.create_dir()
    with pytest.raises(RunInterruptedError, match=r"^budget after round 1\. No checkpoint was written yet"):
        r.execute(callbacks=[StopAt(1, reason="budget", checkpoint=False, interrupt=True)])
    assert not (r.dir / "checkpoint.pt").exists() and not r.interrupted


def test_a_function_is_not_a_callback(small_scenario, tmp_path):
    with pytest.raises(TypeError, match=r"callbacks\[1\]: function has no on_round.*Progress") as e:
        fedsim.run(small_scenario(), out=tmp_path / "x", callbacks=[Progress(print), lambda rnd, m: None])
    assert len(str(e.value).splitlines()) == 1


def test_the_simulation_alone_yields_the_runs_records(small_scenario, tmp_path):
    """Benchmarks drive the Simulation without a run directory: the same records."""
    from fedsim.backend import LocalBackend
    from fedsim.prepare import prepare
    from fedsim.simulation import Simulation

    r = fedsim.run(small_scenario(rounds=3), out=tmp_path / "run")
    sc = parse(small_scenario(rounds=3))
    sim = Simulation(sc, prepare(sc), LocalBackend())
    assert [x.metrics for x in sim.rounds()] == [x.metrics for x in r.records]


def test_history_is_what_was_written_even_when_a_record_is_not_finite(small_scenario, tmp_path, monkeypatch):
    """The record holds the NaN the round computed; history and metrics.jsonl hold strict JSON (null)."""
    from fedsim.peers import PeerGroup

    train = PeerGroup.train
    monkeypatch.setattr(PeerGroup, "train", lambda self, *a: (train(self, *a)[0], float("nan")))
    r = fedsim.run(small_scenario(rounds=2), out=tmp_path / "nan")
    assert all(x.metrics["train_loss"] != x.metrics["train_loss"] for x in r.records)  # NaN
    assert [h["train_loss"] for h in r.history] == [None, None]
    assert r.history == fedsim.load_run(r.dir).history


def test_a_stop_at_the_last_round_resumes_to_just_the_summary(small_scenario, tmp_path):
    full = _full(small_scenario, tmp_path)
    part = fedsim.run(small_scenario(name="part", **CKPT), out=tmp_path / "part", callbacks=[StopAt(7)])
    assert not part.complete and part.history == full.history
    resumed = fedsim.resume(tmp_path / "part")
    assert resumed.records == [] and resumed.summary["resumed_after_round"] == 7
    drop = {"name", "wall_seconds_rounds", "resumed_after_round"}
    assert {k: v for k, v in resumed.summary.items() if k not in drop} == {
        k: v for k, v in full.summary.items() if k not in drop}
    assert (resumed.final_params == full.final_params).all()
