"""The Flower server's output directory: a new run's files, a resume's checks, the writers.

The files are those of ``fedsim run`` written by the same code: the run directory's paths and
its cut back to a checkpoint (:class:`fedsim.rundirectory.RunDirectory`), the checkpoint's
scenario and round checks (:func:`fedsim.rundirectory.check_checkpoint_meta`) and its metrics
prefix (:func:`fedsim.runfiles.checked_prefix`), and one round filed as ``fedsim run`` files it
(:class:`fedsim.runfiles.RoundFiles`: the metrics line, the timings line, the periodic
checkpoint). What is the bridge's own: a run's metrics are refused unless ``overwrite``; the
directory needs no marker and takes no lock (the SuperLink runs one ServerApp per run); a resume
needs a checkpoint (no start over) whose bridge settings match; the last round is never
checkpointed (``final_global.pt`` is written instead).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim import rundir
from fedsim.errors import ResumeMismatchError, RunDirExistsError
from fedsim.flower import common
from fedsim.rundirectory import ResumePoint, RunDirectory, check_checkpoint_meta
from fedsim.runfiles import Checkpointer, MetricsWriter, RoundFiles, checked_prefix, read_history
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


def verified_checkpoint(out: Path, sc: Scenario, bridge: dict[str, Any] | None = None,
                        ) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """``(meta, tensors, metrics prefix)`` of ``out/checkpoint.pt`` when this run may resume from
    it: the same scenario (up to ``name``, ``output``, ``engine``, ``checkpoint``) and bridge
    settings, a ``metrics.jsonl`` that starts with the lines the checkpoint counted, and no
    ``summary.json`` (a finished run). ``bridge=None``: checked later, by the strategy."""
    d = RunDirectory(out, sc)
    ckpt = d.checkpoint
    if d.summary.exists():
        raise rundir.RunCompleteError(f"{out} holds a finished run (summary.json); nothing to resume")
    if not ckpt.exists():
        raise ResumeMismatchError(f"{ckpt} does not exist: nothing to resume (checkpoints are written every "
                                  "checkpoint.every rounds: --set checkpoint.every=K)")
    meta, state = rundir.read_checkpoint(ckpt)
    check_checkpoint_meta(ckpt, meta, d.fingerprint(), sc.rounds, last_round=sc.rounds - 2,
                          hint="resume with the scenario it was saved for, or start a new run")
    if bridge is not None and meta.get("bridge") != bridge:
        raise ResumeMismatchError(f"{ckpt} was saved with run config {meta.get('bridge')}, not {bridge}")
    return meta, state, checked_prefix(d.metrics, meta)


class ServerFiles:
    """``out`` as the Flower server's output directory for ``sc``: :meth:`create` (a new run) or
    :meth:`resume_point` then :meth:`reopen` (a resume), then :meth:`append` per round."""

    def __init__(self, out: Path, sc: Scenario) -> None:
        self.sc = sc
        self.dir = RunDirectory(out, sc)
        self.path = self.dir.path
        self.metrics: MetricsWriter | None = None
        self.rounds: RoundFiles | None = None

    def create(self, overwrite: bool) -> None:
        """Empty metrics and timings, the resolved scenario, no checkpoint (an overwritten run's)."""
        refuse_existing_metrics(self.path, overwrite)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dir.metrics.write_text("")
        self.dir.timings.path.write_text("")
        (self.path / "scenario.yaml").write_text(common.scenario_yaml(self.sc))
        self.dir.checkpoint.unlink(missing_ok=True)
        self._open(b"")

    def resume_point(self, bridge: dict[str, Any]) -> ResumePoint:
        """The verified checkpoint (:func:`verified_checkpoint`) as the point to resume from."""
        meta, state, prefix = verified_checkpoint(self.path, self.sc, bridge)
        return ResumePoint(int(meta["round"]) + 1, meta, state, prefix)

    def reopen(self, point: ResumePoint) -> list[dict[str, Any]]:
        """Cut the files back to ``point`` (the rounds after it run again) and open the writers
        after its lines; returns the metrics records kept."""
        self.dir.truncate(point)
        self._open(point.metrics_prefix)
        return read_history(self.dir.metrics)

    def _open(self, existing: bytes) -> None:
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
        assert self.rounds is not None, "create() or reopen() first"
        self.rounds.checkpointer.save(round_, state, extra, path=path)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.__exit__(None, None, None)
