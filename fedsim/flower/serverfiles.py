"""The Flower server's output directory: a new run's files, a resume's checks, the writers.

The directory is ``fedsim run``'s, made and checked by the same code: created, resumed, locked
and cut back to a checkpoint by :class:`fedsim.rundirectory.RunDirectory` (marker file, ``flock``,
refusal of a non-empty directory fedsim did not make, of unsafe paths and of a directory another
run holds; the scenario file and the checkpoint's scenario and round checks; the metrics prefix),
and one round filed as ``fedsim run`` files it (:class:`fedsim.runfiles.RoundFiles`: the metrics
line, the timings line, the periodic checkpoint). What is the bridge's own: a run's metrics are
refused unless ``overwrite`` (:func:`refuse_existing_metrics`, with the run config's words); a
resume needs a checkpoint (no start over) whose bridge settings match; the last round is never
checkpointed (``final_global.pt`` is written instead).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim import rundir
from fedsim.errors import ResumeMismatchError, RunDirExistsError
from fedsim.rundirectory import ResumePoint, RunDirectory
from fedsim.runfiles import Checkpointer, MetricsPrefix, MetricsWriter, RoundFiles, read_history
from fedsim.scenario import Scenario
from fedsim.simulation import RoundRecord

FINAL_GLOBAL = "final_global.pt"


def refuse_existing_metrics(out_dir: Path, overwrite: bool) -> None:
    """A run's metrics are never truncated by accident: an output directory whose ``metrics.jsonl``
    holds records is refused unless the run config says ``overwrite = true``."""
    metrics = out_dir / rundir.METRICS
    if not overwrite and metrics.is_file() and metrics.stat().st_size > 0:
        raise RunDirExistsError(
            f"{metrics} holds an earlier run's metrics; choose another output-dir, or pass "
            "--run-config overwrite=true to replace them"
        )


def verified_checkpoint(d: RunDirectory) -> ResumePoint:
    """Open ``d`` for a resume (:meth:`fedsim.rundirectory.RunDirectory.open_for_resume`: its lock,
    a run directory of the same scenario, not finished, a checkpoint of it after a round the Flower
    server checkpoints, ``0..rounds - 2``, and the ``metrics.jsonl`` lines it counted) that has a
    checkpoint (the bridge never starts over). The lock is released on a refusal."""
    point = d.open_for_resume(last_round=d.sc.rounds - 2)
    if point.meta is None:
        d.lock.release()
        raise ResumeMismatchError(f"{d.checkpoint} does not exist: nothing to resume (checkpoints are written "
                                  "every checkpoint.every rounds: --set checkpoint.every=K)")
    return point


def check_bridge(ckpt: Path, point: ResumePoint, bridge: dict[str, Any]) -> None:
    """The checkpoint ``ckpt`` (resumed from ``point``) was saved with the run config ``bridge``."""
    saved = (point.meta or {}).get("bridge")
    if saved != bridge:
        raise ResumeMismatchError(f"{ckpt} was saved with run config {saved}, not {bridge}")


class ServerFiles:
    """``out`` as the Flower server's output directory for ``sc``: :meth:`open` (before any work: a
    new run, or a resume's verified point), :meth:`resume_point` and :meth:`reopen` (a resume), then
    :meth:`append` per round; :meth:`close` closes the writers and releases the directory's lock."""

    def __init__(self, out: Path, sc: Scenario) -> None:
        self.sc = sc
        self.dir = RunDirectory(out, sc, foreign_advice="choose another output-dir (fedsim flower demo: another "
                                "--workdir)")
        self.path = self.dir.path
        self.metrics: MetricsWriter | None = None
        self.rounds: RoundFiles | None = None
        self.point: ResumePoint | None = None  # the resume's, once verified

    def open(self, resume: bool, overwrite: bool = False, versions: dict[str, str] | None = None) -> None:
        """Take the directory and hold its lock (a no-op when held): :meth:`create` a new run, or
        verify a resume's checkpoint (:func:`verified_checkpoint`; the bridge settings are checked by
        :meth:`resume_point`)."""
        if self.dir.lock.held:
            return
        if resume:
            self.point = verified_checkpoint(self.dir)
        else:
            self.create(overwrite, versions)

    def refuse_new(self, overwrite: bool) -> None:
        """:meth:`create`'s refusals that take no lock and write nothing (the demo's, before any
        process starts): :func:`refuse_existing_metrics`, then
        :meth:`fedsim.rundirectory.RunDirectory.refuse_new`."""
        refuse_existing_metrics(self.path, overwrite)
        self.dir.refuse_new()

    def create(self, overwrite: bool, versions: dict[str, str] | None = None) -> None:
        """A new run: :meth:`fedsim.rundirectory.RunDirectory.create` (marker, lock, the resolved
        scenario, ``versions.json``; refusals in one line; an overwritten run's files cleared), after
        :func:`refuse_existing_metrics`; then empty metrics and timings."""
        refuse_existing_metrics(self.path, overwrite)
        self.dir.create(overwrite, versions)
        try:
            self.dir.metrics.write_text("")
            self.dir.timings.path.write_text("")
            self._open(None)
        except BaseException:
            self.close()
            raise

    def resume_point(self, bridge: dict[str, Any]) -> ResumePoint:
        """The verified checkpoint (:meth:`open` with ``resume``) saved with the run config ``bridge``,
        as the point to resume from; the lock is released on a refusal."""
        self.open(resume=True)
        assert self.point is not None, "open() made a new run here"
        try:
            check_bridge(self.dir.checkpoint, self.point, bridge)
        except BaseException:
            self.close()
            raise
        return self.point

    def reopen(self, point: ResumePoint) -> list[dict[str, Any]]:
        """Cut the files back to ``point`` (the rounds after it run again) and open the writers
        after its lines; returns the metrics records kept."""
        self.dir.truncate(point)
        self._open(point.metrics_prefix)
        return read_history(self.dir.metrics)

    def _open(self, existing: MetricsPrefix | None) -> None:
        self.metrics = MetricsWriter(self.dir.metrics, existing).__enter__()
        ckpt = Checkpointer(self.dir.checkpoint, self.dir.fingerprint(), self.metrics)
        self.rounds = RoundFiles(self.metrics, self.dir.timings, ckpt, self.sc.checkpoint.every,
                                 final_round=self.sc.rounds - 1)

    def append(self, record: RoundRecord, state: Any, extra: dict[str, Any]) -> bool:
        """File one round (:meth:`fedsim.runfiles.RoundFiles.append`); whether it was checkpointed."""
        assert self.rounds is not None, "create() or reopen() first"
        return self.rounds.append(record, state, extra)[1]

    def save(self, round_: int, state: dict[str, Any], extra: dict[str, Any], path: Path | None = None) -> None:
        """A checkpoint of ``state`` after ``round_`` (to ``path``, default ``checkpoint.pt``)."""
        assert self.rounds is not None and self.metrics is not None, "create() or reopen() first"
        self.metrics.sync()  # the metrics lines the checkpoint counts are on disk before it
        self.rounds.checkpointer.save(round_, state, extra, path=path)

    def close(self) -> None:
        """Close the writers and release the directory's lock."""
        if self.metrics is not None:
            self.metrics.__exit__(None, None, None)
            self.metrics = None
        self.dir.lock.release()
