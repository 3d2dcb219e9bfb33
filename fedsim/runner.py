"""A run, end to end: :func:`prepare` a scenario (features, partition, Byzantine placement,
topology, the groups' set-ups), then :class:`Run` sequences a
:class:`~fedsim.simulation.Simulation`'s rounds into the run directory (docs/architecture.md,
"The data path, once"). Federated mode is the same loop with a star topology and one server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import strategies
from fedlib.heads import num_params as head_params
from fedsim import rng as crng
from fedsim.backend import make_backend, ray_version
from fedsim.callbacks import Callback, Interrupt, Progress, Stop, StopAfter
from fedsim.canaries import Canaries, plant
from fedsim.errors import (  # noqa: F401  (RunDirExistsError, RunInterruptedError re-exported)
    CorruptFileError,
    FedsimError,
    ResumeMismatchError,
    RunDirExistsError,
    RunInterruptedError,
)
from fedsim.features import Features, load_features
from fedsim.group_setup import GroupSetup
from fedsim.limits import local_ray_cpus
from fedsim.models.backbones import BACKBONES
from fedsim.routing import MESSAGE_DTYPES
from fedsim.rundir import RunCompleteError, RunLockedError, RunWriteError  # noqa: F401  (re-exported)
from fedsim.rundirectory import ResumePoint, RunDirectory
from fedsim.runfiles import Checkpointer, MetricsWriter, RoundFiles, parse_lines, run_summary, write_summary
from fedsim.scenario import (
    Scenario,
    build_topology,
    byzantine_mask,
    partition_for,
    received_per_aggregation,
    resolve_f,
    resource_warnings,
    strategy_params,
)
from fedsim.shards import held_classes
from fedsim.simulation import RoundRecord, Simulation
from fedsim.threads import group_threads
from fedsim.topology import Topology

FLOAT_BYTES = 4


@dataclass
class Prepared:
    scenario: Scenario
    features: Features
    setups: list[GroupSetup]
    server_setup: GroupSetup | None
    byzantine: np.ndarray
    f: int
    num_params: int
    bytes_per_message: int
    root: tuple[np.ndarray, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    topology: Topology | None = None  # built once (scenario.build_topology); the peers and probes use this one
    canaries: Canaries | None = None  # planted by an unlearning probe's ``canaries`` knob


def _backbone_param_count(name: str) -> int:
    spec = BACKBONES[name]
    return 0 if spec.build is None else sum(p.numel() for p in spec.build().parameters())


def _gradient_recording(sc: Scenario, train: list[np.ndarray], byz: np.ndarray,
                        absent: list[int] | None) -> int | None:
    """The leaver of the first unlearning probe (its first-epoch gradients are recorded; the probe
    replays them), or None when no unlearning probe runs or the leaver is absent (the retrain)."""
    from fedsim.canaries import default_leaver

    for p in sc.probes:
        if p.kind == "unlearning":
            peer = p.settings().get("peer")
            peer = default_leaver(train, byz) if peer is None else int(peer)
            return None if absent and peer in absent else peer
    return None


def message_window(sc: Scenario, prep: Prepared, absent: list[int] | None, run_probes: bool = True) -> int:
    """Rounds at the end of training whose messages the run keeps (``RoundRecord.messages`` →
    :attr:`Run.messages` → ``ProbeContext.messages``): every round when a probe to run reads the
    gossip (its kind's ``needs_messages``: :mod:`fedsim.probe_gossip`); else the first unlearning
    probe's ``rollback_rounds`` for its gossip rollback (:mod:`attacks.probes.rollback`), or 0: no
    unlearning probe, the retrain (``absent``), or a run the rollback cannot replay (not
    decentralized, a rule other than fedavg with its own head, Byzantine peers, a whole model)."""
    if run_probes and probes_need_messages(sc):
        return sc.rounds
    probe = next((p for p in sc.probes if p.kind == "unlearning"), None)
    if probe is None or absent or sc.mode != "decentralized" or sc.model.whole or prep.byzantine.any():
        return 0
    if sc.strategy.name != "fedavg" or sc.strategy.params.get("include_own", True) is False:
        return 0
    return min(int(probe.rollback_rounds), sc.rounds)


def prepare(sc: Scenario, log: Callable[[str], None] | None = None, absent: list[int] | None = None,
            threads: int | None = None) -> Prepared:
    """Features, partition, Byzantine placement and the per-actor set-ups (no actor started).

    ``absent`` peers take no part (their messages never arrive; the unlearning probe's
    "retrained without that peer" gold standard). ``threads``: the torch threads each group's
    process uses (:func:`group_threads`)."""
    plan = None
    if sc.model.whole:  # more than the linear head is trained (issue 18): fedsim.whole
        from fedsim import whole, whole_plan

        feats, plan = whole_plan.prepare_features(sc, log)
    else:
        feats = load_features(sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir, log)
    n = sc.peers.count
    for warning in resource_warnings(sc) if log else []:
        log(f"warning: {warning}")
    byz = byzantine_mask(sc)  # these five: the same functions validation calls (fedsim.scenario)
    part = partition_for(sc, feats.y_train, byz)
    # an unlearning probe's canaries join the leaver's shard before training (fedsim.canaries)
    feats, train, canaries = plant(feats, list(part.train), byz, sc.probes, sc.seed)
    val, test_idx = part.val, None
    if sc.dataset.domains:  # feature shift: each peer's images through its domain's transform (fedsim.domain_shift)
        from fedsim.domain_shift import shift

        feats, train, val, test_idx = shift(sc, plan, train, val, log)
    topo = build_topology(sc)
    f, in_degree = resolve_f(sc, topo)
    params = strategy_params(sc)
    c, d = feats.num_classes, feats.dim
    num_params = head_params((c, d), sc.training.bias)
    if plan is not None:
        d, num_params = plan.dim, whole_plan.num_trainable(plan)
    rule_cls = strategies.REGISTRY[sc.strategy.name]
    # the class sets peers compare when they connect (Bristle's private-set intersection), for every peer
    classes = held_classes(feats.y_train, train, val, c) if "overlap" in rule_cls.needs else None
    extra = _backbone_param_count(sc.backbone.name) if rule_cls.exchanges == "full_model" else 0
    largest_shard = max(len(t) for t in train)
    common = dict(
        shard_pad=largest_shard if largest_shard <= sc.training.batch_size and plan is None else 0,
        byzantine=byz,
        absent=None if not absent else np.isin(np.arange(n), absent),
        threads=group_threads(sc, threads),
        num_peers=n,
        num_classes=c,
        dim=d,
        seed=sc.seed,
        rounds=sc.rounds,
        mode=sc.mode,
        training=sc.training,
        strategy={"name": sc.strategy.name, "params": params},
        f=f,
        received=received_per_aggregation(in_degree),
        attack=sc.peers.attack,
        topology=topo,
        classes=classes,
        plugins=tuple(sc.plugins),
        record_gradients=_gradient_recording(sc, train, byz, absent),
        message_dtype=sc.engine.message_dtype,
        aggregate_chunk=sc.engine.aggregate_chunk,
    )
    actors = min(sc.engine.num_actors, n)
    blocks = np.array_split(np.arange(n), actors)
    setups = [
        GroupSetup(first=int(b[0]), train_idx=[train[i] for i in b], val_idx=[val[i] for i in b],
                   test_idx=None if test_idx is None else [test_idx[i] for i in b], **common)
        for b in blocks
    ]
    server = GroupSetup(first=0, train_idx=[], val_idx=[], **common) if sc.mode == "federated" else None
    root = None
    if sc.mode == "federated":
        ridx = crng.numpy_generator(sc.seed, "root_set").choice(
            len(feats.y_train), size=min(100, len(feats.y_train)), replace=False
        )
        root = (feats.x_train[ridx], feats.y_train[ridx])
    if plan is not None:  # the same set-ups with the model to train; bytes: the trainable parameters only
        setups = [whole.with_model(s, plan) for s in setups]
        server = None if server is None else whole.with_model(server, plan)
        extra = whole_plan.message_size(plan) - num_params  # + BatchNorm statistics sent, − BatchNorm kept (model.bn)
    info = {
        "peers": n,
        "byzantine_ids": np.flatnonzero(byz).tolist(),
        "f": f,
        "num_params": num_params,
        "feature_dim": d,
        **({} if plan is None else {"model": {"trainable": plan.trainable, "exchange": plan.exchange,
                                              "batching": plan.batching, "bn": plan.bn}}),
        "classes": c,
        "mean_in_degree": in_degree,
        "actors": actors,
        "train_samples_per_peer": [int(len(t)) for t in train],
    }
    if sc.dataset.domains:
        from fedsim.data.domains import peer_domains

        info["domains"] = peer_domains(n, sc.dataset.domains)
    if canaries is not None:
        info["canaries"] = {"peer": canaries.peer, "kind": canaries.kind, "members": len(canaries.member_idx),
                            "heldout": len(canaries.heldout_y), "calibration": len(canaries.calibration_y)}
    bytes_per_message = MESSAGE_DTYPES[sc.engine.message_dtype].itemsize * (num_params + extra)
    return Prepared(sc, feats, setups, server, byz, f, num_params, bytes_per_message, root, info,
                    topology=topo, canaries=canaries)


def versions() -> dict[str, str]:
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
    return out


def probes_need_messages(sc: Scenario) -> bool:
    """Whether a probe of ``sc`` reads the gossip messages of every round (its registered kind's
    ``needs_messages``): then the run keeps them (:attr:`Run.messages`)."""
    if not sc.probes:
        return False
    from fedsim.probe_registry import kinds

    known = kinds()
    return any(getattr(known.get(p.kind), "needs_messages", False) for p in sc.probes)


class Run:
    """One scenario run writing to ``<output.dir>/<name>/`` (what it may delete and its lock:
    :mod:`fedsim.rundir`; the directory's life cycle: :class:`~fedsim.rundirectory.RunDirectory`).

    :meth:`execute` prepares the run, starts a :class:`~fedsim.simulation.Simulation` and
    sequences its rounds: each :class:`~fedsim.simulation.RoundRecord` goes to ``metrics.jsonl``
    and ``timings.jsonl`` (:mod:`fedsim.runfiles`), a periodic checkpoint, then the callbacks
    (:mod:`fedsim.callbacks`: progress, Ctrl-C, stop-after, the caller's). After the last round:
    ``summary.json`` and the probes.

    ``threads``: the torch threads each peer group's process uses (:func:`group_threads`; a
    sweep passes its task's share of the CPUs); None: from ``sc.engine``."""

    def __init__(self, sc: Scenario, run_dir: Path | None = None, absent: list[int] | None = None,
                 run_probes: bool = True, threads: int | None = None) -> None:
        self.sc = sc
        if threads is not None:
            group_threads(sc, threads)  # a bad budget fails here, not after the run directory is made
        self.threads = threads  # torch threads per group (threads.group_threads); None: from sc.engine
        self.dir = Path(run_dir) if run_dir else Path(sc.output.dir) / sc.name
        self.absent = absent
        self.run_probes = run_probes
        self.rundir = RunDirectory(self.dir, sc)
        self.recorded_gradients: np.ndarray | None = None  # the unlearning probe's leaver's, [B, P]
        self.final_params: np.ndarray | None = None
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
        (:meth:`fedsim.rundirectory.RunDirectory.create`)."""
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
        for i, cb in enumerate(callbacks):
            if not callable(getattr(cb, "on_round", None)):
                raise TypeError(f"callbacks[{i}]: {type(cb).__name__} has no on_round(record) method "
                                "(a fedsim.callbacks.Callback; wrap a function f(round, metrics) in Progress(f))")
        if resume and self._resume is None:
            self.open_for_resume()
        elif not resume:
            self.rundir.lock_existing()
        cbs: list[Callback] = [*([Progress(progress)] if progress else []), *callbacks]
        cbs += [*([StopAfter(stop_after)] if stop_after is not None else []), self._interrupt]  # Ctrl-C last:
        # one that arrives while the others run still stops the run after this round
        try:
            return self._execute(cbs, log, self._resume if resume else None)
        finally:
            self._resume = None
            self.rundir.lock.release()

    def _execute(self, callbacks: list[Callback], log, point: ResumePoint | None) -> dict[str, Any]:
        sc = self.sc
        prep = self.prepared = prepare(sc, log, self.absent, self.threads)
        backend = make_backend(sc.engine.backend, sc.engine.address, local_ray_cpus(sc))
        self._interrupt.requested = False
        self.groups, self.server, self.records = [], None, []
        started: list[Callback] = []
        summary: dict[str, Any] | None = None
        try:
            for cb in callbacks:
                if hasattr(cb, "on_start"):
                    cb.on_start(sc, point.start if point else 0)
                started.append(cb)
            sim = Simulation(sc, prep, backend, record_messages=message_window(sc, prep, self.absent, self.run_probes))
            self.groups, self.server = sim.groups, sim.server
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
        prefix = b""
        if point is not None:  # a verified resume: load its state, cut the files back to it
            if point.state is not None:
                sim.restore(point.state, d.checkpoint)
                self._resumed_after = point.start - 1
            d.truncate(point)
            prefix = point.metrics_prefix
        self.history = parse_lines(prefix)
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
        """The final heads, the summary, and the probes (which get the actors' CPUs)."""
        summary = self._summary(prep)
        summary["resumed_after_round"] = self._resumed_after
        self.final_params = sim.final_params()
        if self.sc.probes and self.run_probes:
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
        every ``k`` in ``keep`` (0: the state as restored). Writes no file: the federated-unlearning
        probe's continuation and its gold standard (:mod:`fedsim.probe_fedunlearn`)."""
        if state is None and start != 0:
            raise ValueError(f"continue_without: start={start} needs a state to start from")
        sc = self.sc.model_copy(update={"rounds": start + rounds})
        prep = prepare(sc, None, [peer])
        backend = make_backend(sc.engine.backend, sc.engine.address, local_ray_cpus(sc))
        sim = None
        try:
            sim = Simulation(sc, prep, backend)
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

    def _summary(self, prep: Prepared) -> dict[str, Any]:
        wall = round(sum(x["seconds"] for x in self.rundir.timings.records()), 3)
        summary = run_summary(self.sc, self.history, byzantine=int(prep.byzantine.sum()), f=prep.f,
                              num_params=prep.num_params, timing={"wall_seconds_rounds": wall})
        if "model" in prep.info:
            summary["model"] = prep.info["model"]  # model.batching as resolved
        return summary
