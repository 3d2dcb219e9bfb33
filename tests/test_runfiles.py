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


# --------------------------------------------------------------- resume: the metrics prefix, streamed
def _long_metrics(path, lines, extra=0):
    """A metrics file of ``lines`` records (~200 bytes each) then ``extra`` more (rounds after the
    checkpoint), and the checkpoint metadata that counts the first ``lines``."""
    recs = [rundir.metrics_line({"round": r, "train_loss": 1.0 / (r + 1), "pad": "x" * 150})
            for r in range(lines + extra)]
    path.write_bytes(b"".join(recs))
    prefix = b"".join(recs[:lines])
    return {"round": lines - 1, "metrics_lines": lines, "metrics_sha256": hashlib.sha256(prefix).hexdigest()}, prefix


def test_resume_streams_the_metrics_file_and_keeps_exactly_the_checkpoints_lines(tmp_path):
    """checked_prefix + cut_to_prefix (a resume's metrics): the file is cut back to the very bytes
    the checkpoint counted, and the writer appends after them with the running count and sha256 a
    writer of the whole file would have; neither step holds the file in memory (a 40 MB file: the
    Python heap's peak stays under 4 MiB, where reading it whole took at least twice its size)."""
    import tracemalloc

    from fedsim.runfiles import checked_prefix, cut_to_prefix

    p = tmp_path / "metrics.jsonl"
    meta, prefix = _long_metrics(p, 200_000, extra=3)
    assert p.stat().st_size > 40e6
    tracemalloc.start()
    try:
        kept = checked_prefix(p, meta)
        cut_to_prefix(p, kept)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert p.read_bytes() == prefix and (kept.lines, kept.size) == (200_000, len(prefix))
    with MetricsWriter(p, kept) as w:
        w.write({"round": 200_000})
    data = p.read_bytes()
    assert (w.lines, w.sha256.hexdigest()) == (len(data.splitlines()), hashlib.sha256(data).hexdigest())


def test_resume_refusals_of_a_metrics_file_are_unchanged(tmp_path, monkeypatch):
    """The same one-line refusals as when the file was read whole: fewer lines than the checkpoint
    counted (the count), other bytes, a line longer than fedsim writes (never the checkpoint's),
    a file changed between the check and the cut (nothing written)."""
    import pytest

    from fedsim import runfiles
    from fedsim.errors import ResumeMismatchError
    from fedsim.runfiles import checked_prefix, cut_to_prefix

    p = tmp_path / "metrics.jsonl"
    meta, prefix = _long_metrics(p, 5)
    lines = prefix.splitlines(keepends=True)
    p.write_bytes(b"".join(lines[:3]))
    with pytest.raises(ResumeMismatchError, match=r"has 3 lines but the checkpoint was saved after 5 \(round 4\)"):
        checked_prefix(p, meta)
    p.unlink()
    with pytest.raises(ResumeMismatchError, match="has 0 lines"):
        checked_prefix(p, meta)
    p.write_bytes(prefix.replace(b'"round": 2,', b'"round": 7,'))
    with pytest.raises(ResumeMismatchError, match="first 5 lines of .* are not those the checkpoint recorded"):
        checked_prefix(p, meta)
    monkeypatch.setattr(runfiles, "MAX_JSON_BYTES", 100)  # every line is longer: refused, counted right
    p.write_bytes(prefix)
    with pytest.raises(ResumeMismatchError, match="are not those the checkpoint recorded"):
        checked_prefix(p, meta)
    p.write_bytes(b"".join(lines[:4]))
    with pytest.raises(ResumeMismatchError, match="has 4 lines"):
        checked_prefix(p, meta)
    monkeypatch.undo()
    p.write_bytes(prefix + b"more\n")
    kept = checked_prefix(p, meta)
    p.write_bytes(prefix.replace(b'"round": 2,', b'"round": 7,') + b"more\n")  # replaced meanwhile
    with pytest.raises(ResumeMismatchError, match="changed while the run was being resumed"):
        cut_to_prefix(p, kept)
    assert p.read_bytes().endswith(b"more\n") and not list(tmp_path.glob(".*.tmp"))
