"""fedsim.runfiles.RoundFiles: one round filed as fedsim run and the Flower server file it."""

import hashlib
import json

import torch

from fedsim import rundir
from fedsim.runfiles import Checkpointer, MetricsWriter, RoundFiles, TimingsWriter
from fedsim.simulation import RoundRecord


def _file_rounds(tmp_path, rounds, every, final_round):
    metrics_path = tmp_path / "metrics.jsonl"
    saved, counted = [], []
    with MetricsWriter(metrics_path) as metrics:
        ckpt = Checkpointer(tmp_path / "checkpoint.pt", {"seed": 0}, metrics)
        files = RoundFiles(metrics, TimingsWriter(tmp_path / "timings.jsonl"), ckpt, every, final_round=final_round)
        for r in range(rounds):
            rec = RoundRecord(r, {"round": r, "train_loss": 1.0 / (r + 1)}, {"train": 0.5, "aggregate": 0.25,
                                                                             "evaluate": 0.0})
            line, s = files.append(rec, lambda r=r: {"w": torch.full((2,), float(r))})
            assert line == rundir.metrics_line(rec.metrics)
            saved.append(s)
            if s:  # what the checkpoint counts is on disk, and is the file's content so far
                meta, state = rundir.read_checkpoint(tmp_path / "checkpoint.pt")
                data = metrics_path.read_bytes()
                counted.append((meta["round"], meta["metrics_lines"], len(data.splitlines()),
                                meta["metrics_sha256"] == hashlib.sha256(data).hexdigest(), float(state["w"][0])))
    timings = [json.loads(x) for x in (tmp_path / "timings.jsonl").read_text().splitlines()]
    return saved, counted, timings


def test_round_files_write_metrics_timings_then_the_due_checkpoint(tmp_path):
    """fedsim run's order: the metrics line, the timings line (seconds = train + aggregate, and the
    phases), then every ``every`` rounds a checkpoint counting the lines on disk; the last round
    is checkpointed like any other."""
    saved, counted, timings = _file_rounds(tmp_path, 4, 2, None)
    assert saved == [False, True, False, True]
    assert counted == [(1, 2, 2, True, 1.0), (3, 4, 4, True, 3.0)]
    assert timings[0] == {"round": 0, "seconds": 0.75, "train": 0.5, "aggregate": 0.25, "evaluate": 0.0}
    assert [t["round"] for t in timings] == [0, 1, 2, 3]


def test_round_files_final_round_is_not_checkpointed(tmp_path):
    """``final_round`` (the Flower server's last round, which writes final_global.pt instead): no
    periodic checkpoint after it; the rounds before it as usual; ``every=0``: none at all."""
    saved, counted, _ = _file_rounds(tmp_path, 4, 2, 3)
    assert saved == [False, True, False, False] and counted == [(1, 2, 2, True, 1.0)]
    (tmp_path / "none").mkdir()
    saved, _, _ = _file_rounds(tmp_path / "none", 4, 0, None)
    assert saved == [False] * 4
