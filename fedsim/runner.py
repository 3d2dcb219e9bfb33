"""A run, end to end: :class:`Run` prepares a scenario (:func:`fedsim.prepare.prepare`), then
sequences a :class:`~fedsim.simulation.Simulation`'s rounds into the run directory
(docs/architecture.md, "The data path, once"). Federated mode is the same loop with a star
topology and one server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim import mkl_branch
from fedsim.backend import cluster_address, make_backend, ray_version
from fedsim.callbacks import Callback, Interrupt, Progress, Stop, StopAfter
from fedsim.callbacks import checked as checked_callbacks
from fedsim.errors import (  # noqa: F401  (RunDirExistsError, RunInterruptedError re-exported)
    CorruptFileError,
    FedsimError,
    ResumeMismatchError,
    RunDirExistsError,
    RunInterruptedError,
)
from fedsim.limits import local_ray_cpus
from fedsim.prepare import Prepared, prepare
from fedsim.rundir import RunCompleteError, RunLockedError, RunWriteError  # noqa: F401  (re-exported)
from fedsim.rundirectory import ResumePoint, RunDirectory
from fedsim.runfacts import exposure_of
from fedsim.runfiles import Checkpointer, MetricsWriter, RoundFiles, read_history, run_summary, write_summary
from fedsim.scenario import Scenario
from fedsim.simulation import RoundRecord, Simulation
from fedsim.threads import alone_threads, group_threads, local_workers


def message_window(sc: Scenario, prep: Prepared, absent: list[int] | None, run_probes: bool = True) -> int:
    """Rounds at the end of training whose messages the run keeps (``RoundRecord.messages`` →
    :attr:`Run.messages` → ``ProbeContext.messages``): every round when a probe to run reads the
    gossip (its kind's ``needs_messages``: :mod:`fedsim.probe_gossip`); else the largest
    ``rollback_rounds`` of the probes that roll back (every unlearning probe, a federated-unlearning
    probe with ``method: gossip_rollback``; :mod:`fedsim.probe_rollback`), or 0: no such probe, the
    retrain or continuation (``absent``), or a run the rollback cannot replay (not decentralized, a
    rule other than fedavg with its own head, Byzantine peers, a whole model)."""
    if run_probes and probes_need_messages(sc):
        return sc.rounds
    windows = [int(p.rollback_rounds) for p in sc.probes if p.kind == "unlearning"
               or (p.kind == "federated_unlearning" and p.method == "gossip_rollback")]
    if not windows or absent or sc.mode != "decentralized" or sc.model.whole or prep.byzantine.any():
        return 0
    if sc.strategy.name != "fedavg" or sc.strategy.params.get("include_own", True) is False:
        return 0
    return min(max(windows), sc.rounds)


def versions() -> dict[str, Any]:
    """The versions ``versions.json`` records, and this process's oneMKL branch (``mkl_branch``:
    :func:`fedsim.mkl_branch.current`, absent where torch has no oneMKL to ask)."""
    import platform

    import numpy
    import pydantic

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pydantic": pydantic.__version__,
    }
    if (v := ray_version()) is not None:
        out["ray"] = v
    from fedsim.version import __version__

    out["fedsim"] = __version__
    if (branch := mkl_branch.current()) is not None:
        out[MKL_KEY] = branch
    return out


# versions.json's keys of the oneMKL branches: the first start's, each resume's, and each
# continuation's (Run.continue_without: the federated-unlearning probe's continued federations)
MKL_KEY, ACTORS_KEY, RESUMES_KEY = "mkl_branch", "mkl_branch_ray_actors", "mkl_branch_resumes"
CONTINUATIONS_KEY = "mkl_branch_continuations"


def record_branches(path: Path, driver: str | None, actors: list[str | None] | None, resumed: bool = False,
                    continued: bool = False, first_from: Path | None = None) -> None:
    """Record in ``versions.json`` at ``path`` the oneMKL branch of the driver and, on Ray (``actors``
    not None), how many actors run each (:func:`fedsim.mkl_branch.counted`). A first start's are the
    run's (``mkl_branch``, ``mkl_branch_ray_actors``); a resume's (``resumed``) are appended to
    ``mkl_branch_resumes``, a continuation's (``continued``: :meth:`Run.continue_without`) to
    ``mkl_branch_continuations``, the first start's kept. One warning line where an actor's branch
    differs from the driver's (:func:`fedsim.mkl_branch.differing`), and where a resume's or
    continuation's driver runs another branch than the first start's (the rounds after it may have
    other bits than an uninterrupted run). ``first_from``: the ``versions.json`` holding the first
    start's branch when ``path`` is another file (a continuation writes under ``probes/``, which a
    probe may change, and reads the run's own file)."""
    import warnings

    from fedsim._runs import read_json
    from fedsim.rundir import atomic_write

    try:
        recorded = read_json(path)  # bounded, as every file fedsim reads back
    except (OSError, CorruptFileError):  # gone or garbled since the run began: these lines alone
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    entry: dict[str, Any] = {} if driver is None else {MKL_KEY: driver}
    if actors is not None:
        entry[ACTORS_KEY] = mkl_branch.counted(actors)
    first = recorded.get(MKL_KEY)
    if first_from is not None:
        try:
            run_versions = read_json(first_from)
        except (OSError, CorruptFileError):
            run_versions = {}
        first = run_versions.get(MKL_KEY) if isinstance(run_versions, dict) else None
    if resumed or continued:
        key = RESUMES_KEY if resumed else CONTINUATIONS_KEY
        earlier = recorded.get(key)
        recorded[key] = (earlier if isinstance(earlier, list) else []) + [entry]
    else:
        recorded.update(entry)
    atomic_write(path, (json.dumps(recorded, indent=2) + "\n").encode())
    lines = [mkl_branch.differing(driver, actors)] if actors is not None else []
    if (resumed or continued) and isinstance(first, str) and driver is not None and driver != first:
        what = "this resume" if resumed else "the probe's continuation of the run"
        lines.append(f"{what} runs oneMKL branch {driver} in the driver, the run's first start ran {first} "
                     "(MKL_CBWR): the rounds from here may have other bits than an uninterrupted run")
    for line in lines:
        if line is not None:
            warnings.warn(line, RuntimeWarning, stacklevel=3)


def probes_need_messages(sc: Scenario) -> bool:
    """Whether a probe of ``sc`` reads the gossip messages of every round (its registered kind's
    ``needs_messages``): then the run keeps them (:attr:`Run.messages`)."""
    if not sc.probes:
        return False
    from fedsim.probe_registry import kinds

    known = kinds()
    return any(getattr(known.get(p.kind), "needs_messages", False) for p in sc.probes)


def run_backend(sc: Scenario, threads: int | None = None) -> Any:
    """The backend a run of ``sc`` uses (:func:`fedsim.backend.make_backend`): Ray, or in-process with
    the groups side by side where :func:`fedsim.threads.local_workers` says, a call that runs alone on
    :func:`fedsim.threads.alone_threads`; ``threads``: the run's budget (:class:`Run`'s ``threads``)."""
    return make_backend(sc.engine.backend, sc.engine.address, local_ray_cpus(sc), local_workers(sc, threads),
                        alone_threads(sc, threads))


class Run:
    """One scenario run writing to ``<output.dir>/<name>/`` (what it may delete and its lock:
    :mod:`fedsim.rundir`; the directory's life cycle: :class:`~fedsim.rundirectory.RunDirectory`).

    :meth:`execute` prepares the run, starts a :class:`~fedsim.simulation.Simulation` and
    sequences its rounds: each :class:`~fedsim.simulation.RoundRecord` goes to ``metrics.jsonl``
    and ``timings.jsonl`` (:mod:`fedsim.runfiles`), a periodic checkpoint, then the callbacks
    (:mod:`fedsim.callbacks`: progress, Ctrl-C, stop-after, the caller's). After the last round:
    ``summary.json`` and the probes.

    ``threads``: the torch threads each peer group's process uses (:func:`group_threads`; a
    sweep passes its task's share of the CPUs); None: from ``sc.engine``. ``keep_train``: whether
    :attr:`prepared` keeps the training features after the groups copied their rows
    (:class:`~fedsim.simulation.Simulation`'s ``keep_train``); None: only where this run's probes
    run (a caller that builds a probe context itself, ``run_probes=False``, passes True).
    ``fetch_final_params``: whether :meth:`execute` fetches the heads after the last round into
    :attr:`final_params` (``[N, P]`` float32, 220 MiB at 10,000 peers of ``scale.py``'s model); False
    leaves it None unless this run's probes read them. ``fedsim run`` and ``fedsim sweep`` pass False
    (they write no heads: nothing would read them)."""

    def __init__(self, sc: Scenario, run_dir: Path | None = None, absent: list[int] | None = None,
                 run_probes: bool = True, threads: int | None = None, keep_train: bool | None = None,
                 fetch_final_params: bool = True) -> None:
        self.sc = sc
        if threads is not None:
            group_threads(sc, threads)  # a bad budget fails here, not after the run directory is made
        self.threads = threads  # torch threads per group (threads.group_threads); None: from sc.engine
        self.dir = Path(run_dir) if run_dir else Path(sc.output.dir) / sc.name
        self.absent = absent
        self.run_probes = run_probes
        self.keep_train = bool(run_probes and sc.probes) if keep_train is None else keep_train
        self.rundir = RunDirectory(self.dir, sc)
        self.recorded_gradients: np.ndarray | None = None  # the unlearning probe's leaver's, [B, P]
        self.fetch_final_params = fetch_final_params
        self.final_params: np.ndarray | None = None  # the heads after the last round (fetch_final_params, probes)
        self.final_state: dict[str, Any] | None = None  # Simulation.state() after the last round (probes only)
        self.prepared: Prepared | None = None
        self.groups: list[Any] = []  # the running simulation's actors (the probes free them, tests kill one)
        self.server: Any = None
        self.history: list[dict[str, Any]] = []  # metrics.jsonl's records, a resume's earlier rounds included
        self.records: list[RoundRecord] = []  # the rounds this execute ran, with their phase timings
        self._interrupt = Interrupt()
        self._resume: ResumePoint | None = None
        self._resumed_after: int | None = None

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C stopped the last :meth:`execute`."""
        return self._interrupt.requested

    def create_dir(self, overwrite: bool = False) -> None:
        """Make the run directory and hold its lock until :meth:`execute` ends
        (:meth:`fedsim.rundirectory.RunDirectory.create`). A Ray cluster address (``engine.address``)
        is checked first (:func:`fedsim.backend.cluster_address`): no live cluster there, no folder."""
        if self.sc.engine.backend == "ray" and self.sc.engine.address:
            cluster_address(self.sc.engine.address)
        self.rundir.create(overwrite, versions())

    def open_for_resume(self) -> int:
        """Check that this run directory can be resumed as ``self.sc`` and hold its lock until
        :meth:`execute` ends; returns the first round that will run
        (:meth:`fedsim.rundirectory.RunDirectory.open_for_resume`)."""
        self._resume = self.rundir.open_for_resume()
        return self._resume.start

    # ------------------------------------------------------------------ main loop
    @property
    def messages(self) -> dict[int, np.ndarray]:
        """Round → the heads every peer sent ``[N, P]``, for the rounds whose records carry them
        (:func:`message_window`: a probe reading the gossip, the unlearning probe's rollback)."""
        return {rec.round: rec.messages for rec in self.records if rec.messages is not None}

    def execute(
        self,
        progress: Callable[[int, dict], None] | None = None,
        log: Callable[[str], None] | None = None,
        resume: bool = False,
        stop_after: int | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary, or ``{"stopped_after": r}`` when a
        callback stopped the run after round ``r``. ``progress(round, metrics)``: called after every
        round. ``stop_after``: end after that round as a kill would (:class:`~fedsim.callbacks.StopAfter`;
        tests use it). ``callbacks``: more :mod:`fedsim.callbacks` objects, called in order after
        ``progress`` (then stop-after and the Ctrl-C check). Holds the run directory's lock throughout."""
        callbacks = checked_callbacks(callbacks)
        if resume and self._resume is None:
            self.open_for_resume()
        elif not resume:
            self.rundir.lock_existing()
        cbs: list[Callback] = [*([Progress(progress)] if progress else []), *callbacks]
        cbs += [*([StopAfter(stop_after)] if stop_after is not None else []), self._interrupt]  # Ctrl-C last:
        # one that arrives while the others run still stops the run after this round
        threads = torch.get_num_threads()  # (the groups set the process's: the caller's is given back)
        try:
            return self._execute(cbs, log, self._resume if resume else None)
        finally:
            self._resume = None
            self.rundir.lock.release()
            torch.set_num_threads(threads)

    def _execute(self, callbacks: list[Callback], log, point: ResumePoint | None) -> dict[str, Any]:
        sc = self.sc
        prep = self.prepared = prepare(sc, log, self.absent, self.threads)
        backend = run_backend(sc, self.threads)
        self._interrupt.requested = False
        self.groups, self.server, self.records = [], None, []
        started: list[Callback] = []
        summary: dict[str, Any] | None = None
        try:
            for cb in callbacks:
                if hasattr(cb, "on_start"):
                    cb.on_start(sc, point.start if point else 0)
                started.append(cb)
            sim = Simulation(sc, prep, backend, record_messages=message_window(sc, prep, self.absent, self.run_probes),
                             keep_train=self.keep_train)
            self.groups, self.server = sim.groups, sim.server
            ray = backend.name == "ray"
            if ray or point is not None:  # the actors' oneMKL branches against the driver's; a resume's driver
                record_branches(self.rundir.path / "versions.json", mkl_branch.current(),
                                sim.mkl_branches if ray else None, resumed=point is not None)
            out = self._loop(sim, prep, point, callbacks)
            summary = None if "stopped_after" in out else out
            return out
        except Exception as e:
            if type(e).__name__ in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError"):
                raise RunInterruptedError(
                    f"a peer actor died ({type(e).__name__}); the run stopped. {self.rundir.resume_hint()}"
                ) from None
            raise
        finally:
            for cb in reversed(started):
                if hasattr(cb, "on_end"):
                    cb.on_end(summary)
            backend.kill([*self.groups, *([self.server] if self.server is not None else [])])
            self.groups, self.server = [], None
            backend.shutdown()

    def _loop(self, sim: Simulation, prep: Prepared, point: ResumePoint | None,
              callbacks: list[Callback]) -> dict[str, Any]:
        """Sequence the rounds: record → files → periodic checkpoint → callbacks."""
        d, every = self.rundir, self.sc.checkpoint.every
        prefix, self.history = None, []
        if point is not None:  # a verified resume: load its state, cut the files back to it
            state = point.take_state()  # (freed once restored, not held for the whole run)
            if state is not None:
                sim.restore(state, d.checkpoint)
                self._resumed_after = point.start - 1
            del state
            d.truncate(point)
            prefix = point.metrics_prefix
            self.history = read_history(d.metrics)  # the lines kept, a line at a time
        with MetricsWriter(d.metrics, prefix) as metrics:
            ckpt = Checkpointer(d.checkpoint, d.fingerprint(), metrics)
            files = RoundFiles(metrics, d.timings, ckpt, every)
            for record in sim.rounds(point.start if point else 0):
                r = record.round
                line, saved = files.append(record, sim.state)  # metrics, timings, the periodic checkpoint
                self.history.append(json.loads(line))
                self.records.append(record)
                stops = [s for cb in callbacks if (s := cb.on_round(record)) is not None]
                if stops:
                    return self._stop(r, stops, sim, metrics, ckpt, saved)
        return self._finish(sim, prep)

    def _stop(self, r: int, stops: list[Stop], sim: Simulation, metrics: MetricsWriter, ckpt: Checkpointer,
              saved: bool) -> dict[str, Any]:
        """End after round ``r`` as the callbacks asked: a checkpoint if any wants one, an error if
        any interrupts (Ctrl-C), else ``{"stopped_after": r}``."""
        checkpoint = any(s.checkpoint for s in stops)
        if checkpoint and not saved:
            metrics.sync()
            ckpt.save(r, sim.state())
        interrupt = next((s for s in stops if s.interrupt), None)
        if interrupt is not None:
            done = "; checkpoint saved." if checkpoint else "."
            raise RunInterruptedError(f"{interrupt.reason} after round {r}{done} {self.rundir.resume_hint()}")
        return {"stopped_after": r}

    def _finish(self, sim: Simulation, prep: Prepared) -> dict[str, Any]:
        """The final heads (when asked for or probed), the summary, and the probes (which get the actors' CPUs)."""
        summary = self._summary(prep)
        summary["resumed_after_round"] = self._resumed_after
        probes = bool(self.sc.probes and self.run_probes)
        if self.fetch_final_params or probes:
            self.final_params = sim.final_params()
        if probes:
            from fedsim.probe_runs import run_probes

            # the unlearning probe's leaver's first-epoch gradients, then free the actors' CPUs
            # (heads already fetched; the unlearning probe retrains on them)
            self.recorded_gradients = sim.recorded_gradients()
            self.final_state = sim.state()  # heads and optimizer buffers: the federated-unlearning probe continues it
            sim.close()
            self.groups, self.server = [], None
            summary["probes"] = run_probes(self, prep, self.final_params, retrain=self.retrain_without)
        write_summary(self.rundir.summary, summary)
        return summary

    def retrain_without(self, peer: int) -> np.ndarray:
        """Final heads ``[N, P]`` of this scenario retrained with ``peer`` absent, in
        ``fedsim.probes.retrain_dir(self.dir, peer)``: the retraining the unlearning probe is handed
        (so the probes never import the runner)."""
        from fedsim.probe_context import retrain_dir

        sub = Run(self.sc, retrain_dir(self.dir, peer), absent=[peer], run_probes=False)
        sub.create_dir(overwrite=True)
        sub.execute()
        return np.asarray(sub.final_params)

    def continue_without(self, peer: int, state: dict[str, Any] | None, start: int, rounds: int,
                         keep: Sequence[int]) -> dict[int, np.ndarray]:
        """This scenario's federation with ``peer`` absent (``prepare(sc, absent=[peer])``: from
        ``start`` on its messages never arrive and it aggregates nothing), started from ``state``
        (a :meth:`Simulation.state`, e.g. :attr:`final_state` with unlearned heads; ``None``: from
        scratch, then ``start`` must be 0), run for rounds ``start .. start + rounds - 1`` with
        ``sc.rounds = start + rounds``. Returns the heads ``[N, P]`` after ``k`` of those rounds for
        every ``k`` in ``keep`` (0: the state as restored). The federated-unlearning probe's
        continuation and its gold standard (:mod:`fedsim.probe_fedunlearn`); it writes only its
        oneMKL branches (the driver's, on Ray its actors'), appended to ``mkl_branch_continuations``
        of ``probes/versions.json`` by :func:`record_branches`, as a resume's are to the run's own
        ``versions.json`` (a probe changes no run file outside ``probes/``: fedsim.checks_probes)."""
        if state is None and start != 0:
            raise ValueError(f"continue_without: start={start} needs a state to start from")
        sc = self.sc.model_copy(update={"rounds": start + rounds})
        prep = prepare(sc, None, [peer])
        backend = run_backend(sc)
        sim, threads = None, torch.get_num_threads()
        try:
            sim = Simulation(sc, prep, backend)
            probes_dir = self.rundir.path / "probes"
            probes_dir.mkdir(exist_ok=True)
            record_branches(probes_dir / "versions.json", mkl_branch.current(),
                            sim.mkl_branches if backend.name == "ray" else None, continued=True,
                            first_from=self.rundir.path / "versions.json")
            if state is not None:
                sim.restore(state, self.dir / "final_state")
            out = {0: sim.final_params()} if 0 in keep else {}
            for k, _ in enumerate(sim.rounds(start), start=1):
                if k in keep:
                    out[k] = sim.final_params()
            return out
        finally:
            if sim is not None:
                sim.close()
            backend.shutdown()
            torch.set_num_threads(threads)

    def _summary(self, prep: Prepared) -> dict[str, Any]:
        wall = round(sum(x["seconds"] for x in self.rundir.timings.records()), 3)
        summary = run_summary(self.sc, self.history, byzantine=int(prep.byzantine.sum()), f=prep.f,
                              num_params=prep.num_params, timing={"wall_seconds_rounds": wall},
                              exposure=exposure_of(prep.info))
        if "model" in prep.info:
            summary["model"] = prep.info["model"]  # model.batching as resolved
        return summary
