"""The files a run writes as it goes: ``metrics.jsonl`` (:class:`MetricsWriter`),
``timings.jsonl`` (:class:`TimingsWriter`), ``checkpoint.pt`` (:class:`Checkpointer`), the three
per round in one order (:class:`RoundFiles`), and ``summary.json`` (:func:`run_summary`, with the
numbers it reads back from the history, :func:`history_summary`).

Shared by ``fedsim run`` (:mod:`fedsim.runner`) and the Flower server (:mod:`fedsim.flower.serverfiles`),
so both file a :class:`~fedsim.simulation.RoundRecord` the same way and write the same lines,
checkpoint metadata and summary. The file formats, the lock and the atomic writer are
:mod:`fedsim.rundir`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from fedsim import rundir
from fedsim._runs import MAX_JSON_BYTES, json_record, jsonl_records
from fedsim.errors import CorruptFileError

if TYPE_CHECKING:
    from fedsim.scenario import Scenario
    from fedsim.simulation import RoundRecord

TIMINGS = "timings.jsonl"


class MetricsWriter:
    """Appends one strict-JSON line per round to ``metrics.jsonl`` (:func:`fedsim.rundir.metrics_line`)
    and keeps the running line count and sha256 a checkpoint records. Use as a context manager
    (the file stays open between rounds)."""

    def __init__(self, path: Path, existing: MetricsPrefix | None = None) -> None:
        """``existing``: the lines already in the file (a resume's, :func:`checked_prefix`, after
        :meth:`fedsim.rundirectory.RunDirectory.truncate`), counted and hashed, never held; new
        lines are appended after them."""
        self.path = Path(path)
        self.sha256 = existing.sha256.copy() if existing is not None else hashlib.sha256()
        self.lines = existing.lines if existing is not None else 0
        self._fh: BinaryIO | None = None

    def __enter__(self) -> MetricsWriter:
        with rundir.writing(self.path):
            self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def write(self, rec: dict[str, Any]) -> bytes:
        """Append ``rec`` as one line (flushed); returns the bytes written."""
        assert self._fh is not None, "use MetricsWriter as a context manager"
        line = rundir.metrics_line(rec)
        with rundir.writing(self.path):
            self._fh.write(line)
            self._fh.flush()
        self.sha256.update(line)
        self.lines += 1
        return line

    def sync(self) -> None:
        """Metrics on disk before the checkpoint that counts them (else a crash could leave a
        checkpoint ahead of its metrics, which resume would refuse)."""
        assert self._fh is not None, "use MetricsWriter as a context manager"
        with rundir.writing(self.path):
            os.fsync(self._fh.fileno())


@dataclass(frozen=True)
class MetricsPrefix:
    """The first ``lines`` lines of a metrics file, the checkpoint's: their length in bytes and
    their running sha256 (:func:`checked_prefix`), not their bytes (a long run's file is not held)."""

    lines: int
    size: int
    sha256: Any  # a hashlib sha256 object over those bytes

    @classmethod
    def empty(cls) -> MetricsPrefix:
        return cls(0, 0, hashlib.sha256())


def checked_prefix(path: Path, meta: dict[str, Any]) -> MetricsPrefix:
    """The first ``meta["metrics_lines"]`` lines of the metrics file ``path``, checked against
    the checkpoint's sha256; :class:`~fedsim.errors.ResumeMismatchError` when they are not there.
    Read a line at a time, each at most :data:`fedsim._runs.MAX_JSON_BYTES` (a longer one is not a
    line fedsim wrote: not the lines the checkpoint recorded), and only up to the checkpoint's lines."""
    from fedsim.errors import ResumeMismatchError

    n, r = meta["metrics_lines"], meta["round"]
    sha, size, count, too_long = hashlib.sha256(), 0, 0, False
    if path.exists():
        with open(path, "rb") as fh:
            while count < n and (line := fh.readline(MAX_JSON_BYTES + 1)):
                if len(line) > MAX_JSON_BYTES:  # never a line fedsim wrote; skip to its end to count on
                    too_long = True
                    while line and not line.endswith(b"\n"):
                        line = fh.readline(MAX_JSON_BYTES + 1)
                else:
                    sha.update(line)
                    size += len(line)
                count += 1
            if count < n:
                raise ResumeMismatchError(
                    f"{path} has {count} lines but the checkpoint was saved after {n} (round {r}): it was "
                    "truncated or replaced; restore it or start a new run"
                )
    elif n > 0:
        raise ResumeMismatchError(
            f"{path} has 0 lines but the checkpoint was saved after {n} (round {r}): it was "
            "truncated or replaced; restore it or start a new run"
        )
    if too_long or sha.hexdigest() != meta["metrics_sha256"]:
        raise ResumeMismatchError(
            f"the first {n} lines of {path} are not those the checkpoint recorded (edited or corrupt); "
            "restore it or start a new run"
        )
    return MetricsPrefix(n, size, sha)


def cut_to_prefix(path: Path, prefix: MetricsPrefix) -> None:
    """Replace ``path`` atomically by its first ``prefix.size`` bytes, copied a MiB at a time and
    checked again against ``prefix``'s sha256 (:class:`~fedsim.errors.ResumeMismatchError` if the
    file changed since :func:`checked_prefix`)."""
    from fedsim.errors import ResumeMismatchError

    sha, left = hashlib.sha256(), prefix.size
    with rundir.atomic_file(path) as out:
        if left:
            with open(path, "rb") as fh:
                while left and (chunk := fh.read(min(left, 2**20))):
                    sha.update(chunk)
                    out.write(chunk)
                    left -= len(chunk)
        if left or sha.digest() != prefix.sha256.digest():
            raise ResumeMismatchError(f"{path} changed while the run was being resumed; resume it again")


class TimingsWriter:
    """``timings.jsonl``: one line per round with its wall seconds (training + aggregation) and,
    from the round records, every phase's. Kept apart from ``metrics.jsonl`` so that stays
    reproducible to the byte."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, round_: int, seconds: float, phases: dict[str, float] | None = None) -> None:
        line: dict[str, Any] = {"round": round_, "seconds": round(seconds, 4)}
        line |= {k: round(v, 4) for k, v in (phases or {}).items()}
        with rundir.writing(self.path), open(self.path, "a") as tf:
            tf.write(json.dumps(line) + "\n")

    def trim(self, start: int) -> None:
        """Keep the rounds before ``start``; a torn last line (a kill mid-write) is dropped."""
        tp = self.path
        if not tp.exists():
            return
        lines = [x for x in tp.read_bytes().splitlines() if x.strip()]
        kept = []
        for i, x in enumerate(lines):
            try:
                rnd = json_record(x, f"{tp}: line {i + 1}")["round"]  # CorruptFileError is a ValueError
                if not isinstance(rnd, int):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                if i == len(lines) - 1:
                    break
                raise CorruptFileError(
                    f"{tp}: line {i + 1} is not a timing record; it holds only timings: delete it to resume"
                ) from None
            if rnd < start:
                kept.append(x + b"\n")
        rundir.atomic_write(tp, b"".join(kept))

    def records(self) -> list[dict[str, Any]]:
        return read_history(self.path) if self.path.exists() else []


class Checkpointer:
    """Writes ``checkpoint.pt`` (:func:`fedsim.rundir.write_checkpoint`): a state's tensors with
    the round, the scenario fingerprint and the count and sha256 of the metrics lines written
    so far (``metrics``), plus any ``extra`` metadata (the Flower bridge's settings)."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], metrics: MetricsWriter) -> None:
        self.path, self.fingerprint, self.metrics = Path(path), fingerprint, metrics

    def meta(self, round_: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        fp = self.fingerprint
        return {
            "format": rundir.CHECKPOINT_FORMAT,
            "round": round_,
            "metrics_lines": self.metrics.lines,
            "metrics_sha256": self.metrics.sha256.hexdigest(),
            "scenario": fp,
            "scenario_sha256": rundir.fingerprint_sha256(fp),
            **(extra or {}),
        }

    def save(self, round_: int, state: dict[str, Any], extra: dict[str, Any] | None = None,
             path: Path | None = None) -> None:
        """The state after ``round_`` (to ``path``, default the checkpoint file)."""
        rundir.write_checkpoint(path or self.path, self.meta(round_, extra), state)


class RoundFiles:
    """Files one round, in this order: its ``metrics.jsonl`` line, its ``timings.jsonl`` line (its
    seconds and phases, kept apart so metrics stay reproducible), and every ``every`` rounds the
    metrics fsynced and a checkpoint of ``state()`` (the metrics on disk before the checkpoint that
    counts them). ``final_round``: no periodic checkpoint after that round (the Flower server
    writes ``final_global.pt`` instead; None: ``fedsim run``, which checkpoints any due round)."""

    def __init__(self, metrics: MetricsWriter, timings: TimingsWriter, checkpointer: Checkpointer, every: int,
                 final_round: int | None = None) -> None:
        self.metrics, self.timings, self.checkpointer = metrics, timings, checkpointer
        self.every, self.final_round = int(every), final_round

    def due(self, round_: int) -> bool:
        """Whether a periodic checkpoint follows round ``round_``."""
        if self.final_round is not None and round_ >= self.final_round:
            return False
        return bool(self.every) and (round_ + 1) % self.every == 0

    def append(self, record: RoundRecord, state: Callable[[], dict[str, Any]],
               extra: dict[str, Any] | None = None) -> tuple[bytes, bool]:
        """File ``record``; returns its metrics line and whether a checkpoint (with ``extra``
        metadata) was saved."""
        line = self.metrics.write(record.metrics)
        self.timings.append(record.round, record.seconds, record.phases)
        saved = self.due(record.round)
        if saved:
            self.metrics.sync()
            self.checkpointer.save(record.round, state(), extra)
        return line, saved


def history_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The final accuracies (of the last evaluated round; ``None`` without one) and the bytes
    sent over the whole ``history`` (metrics records), in ``summary.json``'s key order."""
    evals = [x for x in history if "accuracy_mean" in x]
    last = evals[-1] if evals else {}
    return {
        "final_accuracy_mean": last.get("accuracy_mean"),
        "final_accuracy_min": last.get("accuracy_min"),
        "final_accuracy_max": last.get("accuracy_max"),
        "bytes_sent_total": int(sum(x.get("bytes_sent_total", 0) for x in history)),
    }


def run_summary(sc: Scenario, history: list[dict[str, Any]], *, byzantine: int, f: int, num_params: int,
                timing: Mapping[str, float], exposure: Mapping[str, int] | None = None) -> dict[str, Any]:
    """``summary.json``'s common part, in its key order: the scenario's facts, the final numbers of
    ``history`` (:func:`history_summary`), ``timing`` (the engine's wall-time keys), ``f`` (then, where
    given, ``exposure``: :func:`fedsim.runfacts.byzantine_exposure`, decentralized) and the head
    size. ``fedsim run`` and the Flower server each add their own keys after it."""
    from fedsim.runfacts import build_rule

    return {
        "name": sc.name,
        "rounds": sc.rounds,
        "mode": sc.mode,
        "strategy": sc.strategy.name,
        "exchanges": build_rule(sc).exchanges,  # what bytes_sent counts (a pre-aggregator: its inner rule's)
        "attack": sc.peers.attack.name,
        "peers": sc.peers.count,
        "byzantine": int(byzantine),
        **history_summary(history),  # final_accuracy_mean/min/max, bytes_sent_total
        **timing,
        "f": int(f),
        **(exposure or {}),
        "num_params": int(num_params),
    }


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """``summary.json``: indented strict JSON (:func:`fedsim.rundir.json_safe`), written atomically."""
    data = json.dumps(rundir.json_safe(summary), indent=2, allow_nan=False) + "\n"
    rundir.atomic_write(path, data.encode())


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or ``timings.jsonl``) as written (strict, a line at a
    time: :func:`fedsim._runs.jsonl_records`)."""
    return jsonl_records(Path(path), torn_last=False)


def read_records(run_dir: Path, history: list[dict[str, Any]] | None = None) -> list[RoundRecord]:
    """A run directory's rounds as :class:`fedsim.round_record.RoundRecord`: the metrics of
    ``metrics.jsonl`` as written (strict JSON: a non-finite value is ``null``, named under
    ``nonfinite``; ``history``: those records if already read) and the phases of ``timings.jsonl``
    (``messages`` None). Empty where ``timings.jsonl`` is missing or unreadable or lacks a round's
    phases (a run written before they were recorded, a line torn by a kill): never a partial list."""
    from fedsim.round_record import PHASES, RoundRecord

    history = read_history(Path(run_dir) / rundir.METRICS) if history is None else history
    try:
        timings = {t["round"]: t for t in read_history(Path(run_dir) / TIMINGS)}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    records = []
    for m in history:
        t = timings.get(m.get("round"))
        if t is None or not all(isinstance(t.get(k), (int, float)) for k in PHASES):
            return []
        records.append(RoundRecord(m["round"], m, {k: float(t[k]) for k in PHASES}))
    return records
