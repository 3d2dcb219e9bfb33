"""A run's directory as an object: create it, open it for a resume (checked), cut it back to
its checkpoint, and hold its lock meanwhile.

The rules it applies — what fedsim may delete, the ``flock``, checksummed checkpoints, the
scenario fingerprint — are :mod:`fedsim.rundir`'s; the files written per round are
:mod:`fedsim.runfiles`'s.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim import rundir
from fedsim.errors import CorruptFileError, FedsimError, ResumeMismatchError, RunDirExistsError
from fedsim.runfiles import TIMINGS, MetricsPrefix, TimingsWriter, checked_prefix, cut_to_prefix
from fedsim.scenario import Scenario
from fedsim.yamlsafe import dump_yaml


@dataclass
class ResumePoint:
    """What a verified resume starts from: the first round to run, the checkpoint's metadata and
    tensors (None: no checkpoint yet, start over) and the metrics lines it covers (counted and
    hashed, :func:`fedsim.runfiles.checked_prefix`, not held)."""

    start: int
    meta: dict[str, Any] | None
    state: dict[str, Any] | None
    metrics_prefix: MetricsPrefix

    def take_state(self) -> dict[str, Any] | None:
        """:attr:`state`, handed over once (the point holds it no longer): restored, the checkpoint's
        tensors are freed, not held by the point for the whole resumed run (a float32 copy of every
        peer's heads and optimizer state: 0.43 GiB at 10,000 peers, docs/performance.md)."""
        state, self.state = self.state, None
        return state


class RunDirectory:
    """``path`` as the run directory of ``sc`` (its lock: :attr:`lock`)."""

    def __init__(self, path: Path, sc: Scenario, foreign_advice: str = "choose another name or --out") -> None:
        self.path, self.sc = Path(path), sc
        self.foreign_advice = foreign_advice  # the refusal of a directory fedsim did not make: what to do
        self.lock = rundir.DirLock(self.path)

    @property
    def metrics(self) -> Path:
        return self.path / rundir.METRICS

    @property
    def checkpoint(self) -> Path:
        return self.path / rundir.CHECKPOINT

    @property
    def summary(self) -> Path:
        return self.path / rundir.SUMMARY

    @property
    def timings(self) -> TimingsWriter:
        return TimingsWriter(self.path / TIMINGS)

    def fingerprint(self) -> dict[str, Any]:
        return rundir.scenario_fingerprint(self.sc.model_dump(mode="json"))

    # ------------------------------------------------------------------ a new run
    def create(self, overwrite: bool = False, versions: dict[str, Any] | None = None) -> None:
        """Make the run directory (scenario.yaml, versions.json) and hold its lock.

        An existing directory is reused only if fedsim made it: cleared with ``overwrite``, or
        without it when no run wrote a result there (one that failed at start). A directory fedsim
        did not make, the working directory, ``output.dir`` and their parents are refused
        (:func:`fedsim.rundir.refuse_unsafe`); so are directories another run holds."""
        self.refuse_new()
        was_run = rundir.is_run_dir(self.path)
        self._mkdir()
        self.lock.acquire()
        try:
            self._probe_write()
            if was_run:
                if rundir.has_results(self.path) and not overwrite:
                    raise RunDirExistsError(
                        f"{self.path} holds a run's results; pass --overwrite, choose another name, "
                        f"or --resume {self.path}"
                    )
                with rundir.writing(self.path):
                    rundir.clear(self.path)
            self._check_free_space()
            with rundir.writing(self.path):
                rundir.mark(self.path)
                (self.path / "scenario.yaml").write_text(dump_yaml(self.sc.model_dump(mode="json")))
                (self.path / "versions.json").write_text(json.dumps(versions or {}, indent=2) + "\n")
        except BaseException:
            self.lock.release()
            raise

    def refuse_new(self) -> None:
        """The refusals of :meth:`create` that take no lock and write nothing: an unsafe path, a
        non-empty directory fedsim did not make."""
        rundir.refuse_unsafe(self.path, Path(self.sc.output.dir))
        rundir.refuse_foreign(self.path, self.foreign_advice)

    def lock_existing(self) -> None:
        """Hold the lock of a directory :meth:`create` made (a no-op when held already)."""
        if self.lock.held:
            return
        if not rundir.is_run_dir(self.path):
            raise RunDirExistsError(f"{self.path} is not a run directory yet; Run.create_dir makes it")
        self.lock.acquire()

    def _mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise rundir.RunWriteError(f"cannot write to output directory {self.path}: {e.strerror or e}") from None

    def _probe_write(self) -> None:
        try:
            probe = self.path / rundir.WRITE_PROBE
            probe.write_bytes(b"x" * 1024)
            probe.unlink()
        except OSError as e:
            raise rundir.RunWriteError(f"cannot write to output directory {self.path}: {e.strerror or e}") from None

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.path).free
        if free < 50 * 2**20:
            raise rundir.RunWriteError(f"only {free / 2**20:.0f} MiB free at {self.path}; need at least 50 MiB")

    # ------------------------------------------------------------------ resume: check, then cut back
    def open_for_resume(self, last_round: int | None = None) -> ResumePoint:
        """Check that the directory can be resumed as ``sc`` and hold its lock (``last_round``: the
        last round a checkpoint may follow, :func:`check_checkpoint_meta`; the Flower server's is
        ``rounds - 2``).

        Refused with one line (:class:`~fedsim.errors.FedsimError`): not a run directory, a complete
        run, a run in use, a ``scenario.yaml`` or checkpoint of another scenario (fingerprint,
        :func:`fedsim.rundir.scenario_fingerprint`), a ``metrics.jsonl`` that is not the prefix the
        checkpoint recorded, a corrupt or unsafe checkpoint. Stale temp files are removed."""
        require_run_dir(self.path)
        self.lock.acquire()
        try:
            if self.summary.exists():
                raise rundir.RunCompleteError(
                    f"{self.path} is complete ({rundir.SUMMARY} exists); nothing to resume. "
                    "Start a new run with another name, or --overwrite this one"
                )
            rundir.clean_temp_files(self.path)
            return self._verify(last_round)
        except BaseException:
            self.lock.release()
            raise

    def _verify(self, last_round: int | None = None) -> ResumePoint:
        fp = self.fingerprint()
        self._check_scenario_file(fp)
        if not self.checkpoint.exists():  # nothing saved yet: start over
            return ResumePoint(0, None, None, MetricsPrefix.empty())
        meta, state = rundir.read_checkpoint(self.checkpoint)
        self._check_checkpoint_meta(meta, fp, last_round)
        return ResumePoint(meta["round"] + 1, meta, state, checked_prefix(self.metrics, meta))

    def _check_scenario_file(self, fp: dict[str, Any]) -> None:
        """The run directory's scenario.yaml is the scenario being resumed (up to the ignored keys)."""
        from fedsim.scenario import load

        path = self.path / "scenario.yaml"
        recorded = rundir.scenario_fingerprint(load(path).model_dump(mode="json"))
        if recorded != fp:
            raise ResumeMismatchError(
                f"{path} differs from the scenario being resumed: {rundir.first_difference(recorded, fp)}; "
                "a resume continues the recorded scenario (only engine.* may change); start a new run instead"
            )

    def _check_checkpoint_meta(self, meta: dict[str, Any], fp: dict[str, Any], last_round: int | None = None) -> None:
        check_checkpoint_meta(self.checkpoint, meta, fp, self.sc.rounds, last_round=last_round,
                              hint="scenario.yaml was edited since; restore it or start a new run")

    def truncate(self, point: ResumePoint) -> None:
        """Cut ``metrics.jsonl`` back to the lines the checkpoint covers and ``timings.jsonl`` to
        the rounds before ``point.start`` (the rounds after the checkpoint run again)."""
        cut_to_prefix(self.metrics, point.metrics_prefix)  # copied a MiB at a time, checked again
        self.timings.trim(point.start)

    def resume_hint(self) -> str:
        """How to continue this run (the last sentence of an interruption's one line)."""
        if self.checkpoint.exists():
            try:
                r = rundir.read_checkpoint_meta(self.checkpoint)["round"]
            except FedsimError as e:
                return f"Its checkpoint cannot be used ({e})"
            return f"Continue from its checkpoint (after round {r}) with: {resume_command(self.path, self.sc.plugins)}"
        return (f"No checkpoint was written yet (set checkpoint.every); {resume_command(self.path, self.sc.plugins)} "
                "restarts it")


def resume_command(path: Path, plugins: Sequence[str] = ()) -> str:
    """The command that continues the run in ``path``, to paste as it is: ``fedsim run --resume
    PATH`` and a ``--plugin`` for each plugin its scenario records (``plugins``), since a resume
    refuses a recorded plugin that is not named again (:func:`load_for_resume`)."""
    return shlex.join(["fedsim", "run", "--resume", str(path), *(a for p in plugins for a in ("--plugin", p))])


def require_run_dir(path: Path) -> None:
    """One line (:class:`~fedsim.errors.ResumeMismatchError`) unless ``path`` is a run directory."""
    if not rundir.is_run_dir(path):
        raise ResumeMismatchError(f"{path} is not a fedsim run directory (no scenario.yaml); nothing to resume")


def load_for_resume(path: Path, overrides: dict[str, Any] | None = None, plugins: Sequence[str] = ()) -> Scenario:
    """The scenario recorded in the run directory ``path`` (with ``overrides``): what ``fedsim run
    --resume`` and :func:`fedsim.resume` continue. A folder that is no run directory is that one
    line (before, ``DIR/scenario.yaml: no such file``), not a missing file. ``plugins`` (the
    user's ``--plugin``) are granted, not added: a resume continues the recorded scenario, whose
    ``plugins:`` must each be among them (:func:`fedsim.scenario.check_plugins_granted`)."""
    from fedsim import plugins as plugin_mod
    from fedsim.scenario import ScenarioError, load

    require_run_dir(path)
    try:
        plugin_mod.grant(plugins)
    except ValueError as e:
        raise ScenarioError(f"--plugin: {e}") from None
    return load(path / "scenario.yaml", overrides)


def check_checkpoint_meta(ckpt: Path, meta: dict[str, Any], fp: dict[str, Any], rounds: int, *, hint: str,
                          last_round: int | None = None) -> None:
    """The checkpoint ``ckpt`` (its metadata ``meta``) was saved for the scenario of fingerprint
    ``fp`` (else :class:`~fedsim.errors.ResumeMismatchError`, ending with ``hint``) after a round
    in ``0..last_round`` (default ``rounds - 1``; the Flower server never checkpoints its last
    round) with one metrics line per round (else :class:`~fedsim.errors.CorruptFileError`).
    Shared by ``fedsim run --resume`` and the Flower server's resume."""
    if meta["scenario_sha256"] != rundir.fingerprint_sha256(fp) or meta["scenario"] != fp:
        raise ResumeMismatchError(
            f"{ckpt} was saved for another scenario: {rundir.first_difference(meta['scenario'], fp)}; {hint}"
        )
    last = rounds - 1 if last_round is None else last_round
    r, n = meta["round"], meta["metrics_lines"]
    if not (isinstance(r, int) and isinstance(n, int) and 0 <= r <= last and n == r + 1):
        raise CorruptFileError(f"{ckpt}: round {r!r} with {n!r} metrics lines does not fit {rounds} rounds")
