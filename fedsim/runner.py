"""The round loop (docs/architecture.md, "The data path, once"):

local steps → Byzantine peers forge → the topology says who hears whom → each honest peer
aggregates → metrics. Federated mode is the same loop with a star topology and one server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml

import strategies
from fedsim import rng as crng
from fedsim import rundir
from fedsim.backend import make_backend, ray_version
from fedsim.canaries import Canaries, plant
from fedsim.errors import (  # noqa: F401  (RunDirExistsError, RunInterruptedError re-exported)
    CorruptFileError,
    FedsimError,
    ResumeMismatchError,
    RunDirExistsError,
    RunInterruptedError,
)
from fedsim.features import Features, load_features
from fedsim.models.backbones import BACKBONES
from fedsim.peers import GroupSetup, PeerGroup, Server, held_classes
from fedsim.rundir import RunCompleteError, RunLockedError, RunWriteError  # noqa: F401  (re-exported)
from fedsim.scenario import (
    Scenario,
    build_topology,
    byzantine_mask,
    partition_for,
    received_per_aggregation,
    resolve_f,
    resource_warnings,
    sampled_clients,
    strategy_params,
)
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


def prepare(sc: Scenario, log: Callable[[str], None] | None = None, absent: list[int] | None = None) -> Prepared:
    """Features, partition, Byzantine placement and the per-actor set-ups (no actor started).

    ``absent`` peers take no part (their messages never arrive; the unlearning probe's
    "retrained without that peer" gold standard)."""
    plan = None
    if sc.model.whole:  # more than the linear head is trained (issue 18): fedsim.whole
        from fedsim import whole

        feats, plan = whole.prepare_features(sc, log)
    else:
        feats = load_features(sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir, log)
    n = sc.peers.count
    for warning in resource_warnings(sc) if log else []:
        log(f"warning: {warning}")
    byz = byzantine_mask(sc)  # these five: the same functions validation calls (fedsim.scenario)
    part = partition_for(sc, feats.y_train, byz)
    # an unlearning probe's canaries join the leaver's shard before training (fedsim.canaries)
    feats, train, canaries = plant(feats, list(part.train), byz, sc.probes, sc.seed)
    topo = build_topology(sc)
    f, in_degree = resolve_f(sc, topo)
    params = strategy_params(sc)
    c, d = feats.num_classes, feats.dim
    num_params = c * d + (c if sc.training.bias else 0)
    if plan is not None:
        d, num_params = plan.dim, whole.num_trainable(plan)
    rule_cls = strategies.REGISTRY[sc.strategy.name]
    # the class sets peers compare when they connect (Bristle's private-set intersection), for every peer
    classes = held_classes(feats.y_train, train, part.val, c) if "overlap" in rule_cls.needs else None
    extra = _backbone_param_count(sc.backbone.name) if rule_cls.exchanges == "full_model" else 0
    largest_shard = max(len(t) for t in train)
    threads = sc.engine.cpus_per_actor
    if sc.engine.backend == "local":  # in-process, the groups run one after another: each may use every CPU
        threads = min(threads * sc.engine.num_actors, os.cpu_count() or 1)  # but no more than the machine has
    common = dict(
        shard_pad=largest_shard if largest_shard <= sc.training.batch_size and plan is None else 0,
        byzantine=byz,
        absent=None if not absent else np.isin(np.arange(n), absent),
        threads=max(1, int(threads)),
        num_peers=n,
        num_classes=c,
        dim=d,
        seed=sc.seed,
        rounds=sc.rounds,
        mode=sc.mode,
        training=sc.training.model_dump(),
        strategy={"name": sc.strategy.name, "params": params},
        f=f,
        received=received_per_aggregation(in_degree),
        attack=sc.peers.attack.model_dump(),
        topology=topo,
        classes=classes,
        plugins=tuple(sc.plugins),
        record_gradients=_gradient_recording(sc, train, byz, absent),
    )
    actors = min(sc.engine.num_actors, n)
    blocks = np.array_split(np.arange(n), actors)
    setups = [
        GroupSetup(first=int(b[0]), train_idx=[train[i] for i in b], val_idx=[part.val[i] for i in b], **common)
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
        extra = 0
    info = {
        "peers": n,
        "byzantine_ids": np.flatnonzero(byz).tolist(),
        "f": f,
        "num_params": num_params,
        "feature_dim": d,
        **({} if plan is None else {"model": {"trainable": plan.trainable, "exchange": plan.exchange}}),
        "classes": c,
        "mean_in_degree": in_degree,
        "actors": actors,
        "train_samples_per_peer": [int(len(t)) for t in train],
    }
    if canaries is not None:
        info["canaries"] = {"peer": canaries.peer, "kind": canaries.kind, "members": len(canaries.member_idx),
                            "heldout": len(canaries.heldout_y)}
    return Prepared(sc, feats, setups, server, byz, f, num_params, FLOAT_BYTES * (num_params + extra), root, info,
                    topology=topo, canaries=canaries)


def local_ray_cpus(sc: Scenario) -> int | None:
    """CPUs of the Ray instance a run starts on this machine (None: it attaches to
    ``engine.address``): the machine's, or more where the actors ask for more, so every actor is
    scheduled. Federated mode's server actor asks for ``cpus_per_actor`` too; without it in the
    count the server would never be scheduled where ``cpu_count <= num_actors`` and round 0
    would wait forever."""
    if sc.engine.address:
        return None
    actors = sc.engine.num_actors + (1 if sc.mode == "federated" else 0)
    return max(os.cpu_count() or 1, math.ceil(actors * sc.engine.cpus_per_actor))


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
    from fedsim import __version__

    out["fedsim"] = __version__
    return out


class _Resume(NamedTuple):
    """What a verified resume starts from: the first round to run, the checkpoint's metadata and
    tensors (None: no checkpoint yet, start over) and the metrics lines it covers."""

    start: int
    meta: dict[str, Any] | None
    state: dict[str, Any] | None
    metrics_prefix: bytes


def _merge_group_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Every group's state as one: per-peer tensors concatenated in peer order, the shared
    entries (the same in every group) once. Independent of how peers are split over groups."""
    per_peer = set(PeerGroup.PER_PEER_STATE)
    merged = {k: v for k, v in states[0].items() if k not in per_peer}
    merged |= {k: torch.cat([s[k] for s in states]) for k in PeerGroup.PER_PEER_STATE if k in states[0]}
    return merged


def _split_group_state(merged: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """:func:`_merge_group_states` undone for groups hosting ``sizes`` peers each (in order)."""
    out, first = [], 0
    for n in sizes:
        st = {}
        for k, v in merged.items():
            if k in PeerGroup.PER_PEER_STATE:
                st[k] = v[first : first + n]
            else:
                st[k] = v.clone() if isinstance(v, torch.Tensor) else v
        out.append(st)
        first += n
    return out


def _check_state(path: Path, what: str, loaded: Any, fresh: dict[str, Any]) -> None:
    """A checkpoint's ``what`` state has the keys, types and shapes this scenario's fresh one has
    (``stale_history``: a tensor or None, its size varies); else CorruptFileError naming ``path``."""
    if not isinstance(loaded, dict) or loaded.keys() != fresh.keys():
        has = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
        raise CorruptFileError(f"{path}: the {what} state has entries {has}, expected {sorted(fresh)}")
    for k, want in fresh.items():
        got = loaded[k]
        if k == "stale_history":
            ok = got is None or (isinstance(got, torch.Tensor) and got.dtype == torch.float32)
        elif isinstance(want, torch.Tensor):
            ok = isinstance(got, torch.Tensor) and got.shape == want.shape and got.dtype == want.dtype
        else:
            ok = type(got) is type(want)
        if not ok:
            desc = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CorruptFileError(f"{path}: the {what} state's {k!r} is {desc}, this scenario needs "
                                   f"{tuple(want.shape) if isinstance(want, torch.Tensor) else type(want).__name__}")


class Run:
    """One scenario run writing to ``<output.dir>/<name>/`` (what it may delete and its lock:
    :mod:`fedsim.rundir`)."""

    def __init__(self, sc: Scenario, run_dir: Path | None = None, absent: list[int] | None = None,
                 run_probes: bool = True) -> None:
        self.sc = sc
        self.dir = Path(run_dir) if run_dir else Path(sc.output.dir) / sc.name
        self.absent = absent
        self.run_probes = run_probes
        self.recorded_gradients: np.ndarray | None = None  # the unlearning probe's leaver's, [B, P]
        self._lock = rundir.DirLock(self.dir)
        self._resume: _Resume | None = None
        self._resumed_after: int | None = None

    # ------------------------------------------------------------------ output dir
    def create_dir(self, overwrite: bool = False) -> None:
        """Make the run directory (scenario.yaml, versions.json) and hold its lock until
        :meth:`execute` ends.

        An existing directory is reused only if fedsim made it: cleared with ``overwrite``, or
        without it when no run wrote a result there (one that failed at start). A directory fedsim
        did not make, the working directory, ``output.dir`` and their parents are refused
        (:func:`fedsim.rundir.refuse_unsafe`); so are directories another run holds."""
        rundir.refuse_unsafe(self.dir, Path(self.sc.output.dir))
        rundir.refuse_foreign(self.dir)
        was_run = rundir.is_run_dir(self.dir)
        self._mkdir()
        self._lock.acquire()
        try:
            self._probe_write()
            if was_run:
                if rundir.has_results(self.dir) and not overwrite:
                    raise RunDirExistsError(
                        f"{self.dir} holds a run's results; pass --overwrite, choose another name, "
                        f"or --resume {self.dir}"
                    )
                with rundir.writing(self.dir):
                    rundir.clear(self.dir)
            self._check_free_space()
            with rundir.writing(self.dir):
                (self.dir / rundir.MARKER).write_text("a fedsim run directory: fedsim may clear it on --overwrite\n")
                (self.dir / "scenario.yaml").write_text(
                    yaml.safe_dump(self.sc.model_dump(mode="json"), sort_keys=False)
                )
                (self.dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
        except BaseException:
            self._lock.release()
            raise

    def _mkdir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise rundir.RunWriteError(f"cannot write to output directory {self.dir}: {e.strerror or e}") from None

    def _probe_write(self) -> None:
        try:
            probe = self.dir / rundir.WRITE_PROBE
            probe.write_bytes(b"x" * 1024)
            probe.unlink()
        except OSError as e:
            raise rundir.RunWriteError(f"cannot write to output directory {self.dir}: {e.strerror or e}") from None

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self.dir).free
        if free < 50 * 2**20:
            raise rundir.RunWriteError(f"only {free / 2**20:.0f} MiB free at {self.dir}; need at least 50 MiB")

    # ------------------------------------------------------------------ resume: check, then hold
    def open_for_resume(self) -> int:
        """Check that this run directory can be resumed as ``self.sc`` and hold its lock until
        :meth:`execute` ends; returns the first round that will run.

        Refused with one line (:class:`~fedsim.errors.FedsimError`): not a run directory, a complete
        run, a run in use, a ``scenario.yaml`` or checkpoint of another scenario (fingerprint,
        :func:`fedsim.rundir.scenario_fingerprint`), a ``metrics.jsonl`` that is not the prefix the
        checkpoint recorded, a corrupt or unsafe checkpoint. Stale temp files are removed."""
        if not rundir.is_run_dir(self.dir):
            raise ResumeMismatchError(f"{self.dir} is not a fedsim run directory (no scenario.yaml); nothing to resume")
        self._lock.acquire()
        try:
            if (self.dir / rundir.SUMMARY).exists():
                raise rundir.RunCompleteError(
                    f"{self.dir} is complete ({rundir.SUMMARY} exists); nothing to resume. "
                    "Start a new run with another name, or --overwrite this one"
                )
            rundir.clean_temp_files(self.dir)
            self._resume = self._verify_resume()
        except BaseException:
            self._lock.release()
            raise
        return self._resume.start

    def _fingerprint(self) -> dict[str, Any]:
        return rundir.scenario_fingerprint(self.sc.model_dump(mode="json"))

    def _verify_resume(self) -> _Resume:
        fp = self._fingerprint()
        self._check_scenario_file(fp)
        ckpt = self.dir / rundir.CHECKPOINT
        if not ckpt.exists():  # nothing saved yet: start over
            return _Resume(0, None, None, b"")
        meta, state = rundir.read_checkpoint(ckpt)
        self._check_checkpoint_meta(ckpt, meta, fp)
        return _Resume(meta["round"] + 1, meta, state, self._metrics_prefix(meta))

    def _check_scenario_file(self, fp: dict[str, Any]) -> None:
        """The run directory's scenario.yaml is the scenario being resumed (up to the ignored keys)."""
        from fedsim.scenario import load

        path = self.dir / "scenario.yaml"
        recorded = rundir.scenario_fingerprint(load(path).model_dump(mode="json"))
        if recorded != fp:
            raise ResumeMismatchError(
                f"{path} differs from the scenario being resumed: {rundir.first_difference(recorded, fp)}; "
                "a resume continues the recorded scenario (only engine.* may change); start a new run instead"
            )

    def _check_checkpoint_meta(self, ckpt: Path, meta: dict[str, Any], fp: dict[str, Any]) -> None:
        if meta["scenario_sha256"] != rundir.fingerprint_sha256(fp) or meta["scenario"] != fp:
            raise ResumeMismatchError(
                f"{ckpt} was saved for another scenario: {rundir.first_difference(meta['scenario'], fp)}; "
                f"scenario.yaml was edited since; restore it or start a new run"
            )
        r, n = meta["round"], meta["metrics_lines"]
        if not (isinstance(r, int) and isinstance(n, int) and 0 <= r < self.sc.rounds and n == r + 1):
            raise CorruptFileError(f"{ckpt}: round {r!r} with {n!r} metrics lines does not fit {self.sc.rounds} rounds")

    def _metrics_prefix(self, meta: dict[str, Any]) -> bytes:
        """The metrics lines the checkpoint covers, checked against its line count and sha256."""
        path = self.dir / rundir.METRICS
        lines = path.read_bytes().splitlines(keepends=True) if path.exists() else []
        n, r = meta["metrics_lines"], meta["round"]
        if len(lines) < n:
            raise ResumeMismatchError(
                f"{path} has {len(lines)} lines but the checkpoint was saved after {n} (round {r}): it was "
                "truncated or replaced; restore it or start a new run"
            )
        prefix = b"".join(lines[:n])
        if hashlib.sha256(prefix).hexdigest() != meta["metrics_sha256"]:
            raise ResumeMismatchError(
                f"the first {n} lines of {path} differ from those the checkpoint recorded (edited or corrupt); "
                "restore it or start a new run"
            )
        return prefix

    # ------------------------------------------------------------------ main loop
    def execute(
        self,
        progress: Callable[[int, dict], None] | None = None,
        log: Callable[[str], None] | None = None,
        resume: bool = False,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary. ``stop_after`` ends early after that
        round (tests use it to simulate a kill). Holds the run directory's lock throughout."""
        if resume and self._resume is None:
            self.open_for_resume()
        elif not resume:
            self._lock_new_run()
        try:
            return self._execute(progress, log, resume, stop_after)
        finally:
            self._resume = None
            self._lock.release()

    def _lock_new_run(self) -> None:
        if self._lock.held:
            return
        if not rundir.is_run_dir(self.dir):
            raise RunDirExistsError(f"{self.dir} is not a run directory yet; Run.create_dir makes it")
        self._lock.acquire()

    def _execute(self, progress, log, resume: bool, stop_after: int | None) -> dict[str, Any]:
        sc = self.sc
        prep = prepare(sc, log, self.absent)
        backend = make_backend(sc.engine.backend, sc.engine.address, local_ray_cpus(sc))
        import signal
        import threading

        self._stop_requested = False
        self.groups, self.server = [], None
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda *_: setattr(self, "_stop_requested", True))
        try:
            return self._loop(prep, backend, progress, resume, stop_after)
        except Exception as e:
            if type(e).__name__ in ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError"):
                raise RunInterruptedError(
                    f"a peer actor died ({type(e).__name__}); the run stopped. "
                    f"{self._resume_hint()}"
                ) from None
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            backend.kill([*self.groups, *([self.server] if self.server is not None else [])])
            self.groups, self.server = [], None
            backend.shutdown()

    def _resume_hint(self) -> str:
        ckpt = self.dir / rundir.CHECKPOINT
        if ckpt.exists():
            try:
                r = rundir.read_checkpoint_meta(ckpt)["round"]
            except FedsimError as e:
                return f"Its checkpoint cannot be used ({e})"
            return f"Continue from its checkpoint (after round {r}) with: fedsim run --resume {self.dir}"
        return f"No checkpoint was written yet (set checkpoint.every); fedsim run --resume {self.dir} restarts it"

    def _apply_resume(self, prep: Prepared, backend, groups, server) -> int:
        """Load the verified checkpoint into the fresh actors, cut metrics.jsonl back to the lines
        it covers and timings.jsonl to the rounds before; returns the first round to run."""
        res = self._resume
        assert res is not None, "open_for_resume first"
        if res.state is not None:
            self._restore_state(res.state, backend, groups, server, [len(s.train_idx) for s in prep.setups])
            self._resumed_after = res.start - 1
        metrics = self.dir / rundir.METRICS
        rundir.atomic_write(metrics, res.metrics_prefix)
        self._metrics_hash = hashlib.sha256(res.metrics_prefix)
        self._metrics_lines = len(res.metrics_prefix.splitlines())
        self._trim_timings(res.start)
        return res.start

    def _restore_state(self, state: dict[str, Any], backend, groups, server, sizes: list[int]) -> None:
        ckpt = self.dir / rundir.CHECKPOINT
        fresh = _merge_group_states(backend.get([g.get_state.remote() for g in groups]))
        if not isinstance(state, dict) or state.keys() != {"groups", "server"}:
            raise CorruptFileError(f"{ckpt}: expected the groups' and the server's state")
        _check_state(ckpt, "peers'", state["groups"], fresh)
        parts = _split_group_state(state["groups"], sizes)
        backend.get([g.set_state.remote(st) for g, st in zip(groups, parts, strict=True)])
        if server is not None:
            _check_state(ckpt, "server's", state["server"], backend.get(server.get_state.remote()))
            backend.get(server.set_state.remote(state["server"]))
        elif state["server"] is not None:
            raise CorruptFileError(f"{ckpt}: holds a server's state, but this run has no server")

    def _trim_timings(self, start: int) -> None:
        """Keep timings.jsonl's rounds before ``start``; a torn last line (a kill mid-write) is dropped."""
        tp = self.dir / "timings.jsonl"
        if not tp.exists():
            return
        lines = [x for x in tp.read_bytes().splitlines() if x.strip()]
        kept = []
        for i, x in enumerate(lines):
            try:
                rnd = json.loads(x)["round"]
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

    def _loop(self, prep: Prepared, backend, progress, resume: bool, stop_after: int | None) -> dict[str, Any]:
        sc = self.sc
        feats = prep.features
        fref = backend.put(
            {"x_train": feats.x_train, "y_train": feats.y_train, "x_test": feats.x_test, "y_test": feats.y_test}
        )
        group_cls, server_cls = PeerGroup, Server
        if sc.model.whole:
            from fedsim.whole import WholePeerGroup, WholeServer

            group_cls, server_cls = WholePeerGroup, WholeServer
        groups = [backend.actor(group_cls, s, fref, num_cpus=sc.engine.cpus_per_actor) for s in prep.setups]
        self.groups = groups
        self._features_ref = fref
        server = (
            backend.actor(server_cls, prep.server_setup, *prep.root, num_cpus=sc.engine.cpus_per_actor)
            if prep.server_setup
            else None
        )
        self.server = server
        backend.get([g.ping.remote() for g in groups])
        metrics_path = self.dir / rundir.METRICS
        self._metrics_hash, self._metrics_lines = hashlib.sha256(), 0
        start = self._apply_resume(prep, backend, groups, server) if resume else 0
        honest_ids = np.flatnonzero(~prep.byzantine)
        out_degree = self._out_degree(prep)
        with rundir.writing(metrics_path):
            mf = open(metrics_path, "ab")  # noqa: SIM115 - closed by the with below
        with mf:
            for r in range(start, sc.rounds):
                t0 = time.perf_counter()
                g_ref = server.get_global.remote() if server is not None else None
                sampled = sampled_clients(sc, r)  # None: every client (and every decentralized peer)
                if sampled is None:
                    trained = [g.train.options(num_returns=2).remote(r, g_ref) for g in groups]
                else:
                    trained = [g.train.options(num_returns=2).remote(r, g_ref, sampled) for g in groups]
                params_refs = [t[0] for t in trained]
                if server is not None and sampled is not None:
                    stats = [backend.get(server.aggregate.remote(r, *params_refs, sampled=sampled))]
                elif server is not None:
                    stats = [backend.get(server.aggregate.remote(r, *params_refs))]
                else:
                    stats = backend.get([g.aggregate.remote(r, *params_refs) for g in groups])
                t_round = time.perf_counter() - t0
                senders = sc.peers.count if sampled is None else int(sampled.sum())
                trainers = len(honest_ids) if sampled is None else int(sampled[honest_ids].sum())
                train_loss = sum(backend.get([t[1] for t in trained])) / max(trainers, 1)
                rec: dict[str, Any] = {
                    "round": r,
                    "group": "honest",
                    "train_loss": round(float(train_loss), 6),
                    "dropped": sum(s["dropped"] for s in stats),
                    "skipped": sum(s["skipped"] for s in stats),
                    "bytes_sent_per_peer": int(out_degree * prep.bytes_per_message),
                    "bytes_sent_total": int(out_degree * prep.bytes_per_message * sc.peers.count),
                }
                if sampled is not None:  # only when fewer than all clients: an unsampled run's metrics are unchanged
                    # only the sampled clients send; bytes_sent_per_peer stays the mean over all peers
                    rec |= {
                        "bytes_sent_per_peer": int(prep.bytes_per_message * senders / sc.peers.count),
                        "bytes_sent_total": int(prep.bytes_per_message * senders),
                        "clients_sampled": senders,
                        "honest_clients_sampled": trainers,
                    }
                if (r + 1) % sc.evaluation.every == 0 or r == sc.rounds - 1:
                    rec |= self._evaluate(prep, backend, groups, server, honest_ids, r)
                self._write_metrics(mf, rec)
                self._write_timing(r, t_round)  # kept apart: metrics.jsonl is reproducible to the byte
                if progress:
                    progress(r, rec)
                if sc.checkpoint.every and (r + 1) % sc.checkpoint.every == 0:
                    self._sync(mf)
                    self._checkpoint(backend, groups, server, r)
                if stop_after is not None and r >= stop_after:
                    return {"stopped_after": r}
                if self._stop_requested:  # Ctrl-C: finish the round, save, stop
                    self._sync(mf)
                    self._checkpoint(backend, groups, server, r)
                    raise RunInterruptedError(f"interrupted after round {r}; checkpoint saved. {self._resume_hint()}")
        summary = self._summary(prep)
        summary["resumed_after_round"] = self._resumed_after
        self.final_params = np.concatenate(backend.get([g.params.remote() for g in groups]))
        if server is not None:
            self.final_params = np.broadcast_to(backend.get(server.get_global.remote()), self.final_params.shape).copy()
        self.prepared = prep
        if sc.probes and self.run_probes:
            from fedsim.probe_runs import run_probes

            # the unlearning probe's leaver's first-epoch gradients (recorded by its group), then
            # free the actors' CPUs (heads already fetched; the unlearning probe retrains on them)
            rec = [g for g in backend.get([g.recorded_gradients.remote() for g in groups]) if g is not None]
            self.recorded_gradients = rec[0] if rec else None
            backend.kill([*groups, *([server] if server is not None else [])])
            self.groups, self.server = [], None

            summary["probes"] = run_probes(self, prep, self.final_params, retrain=self.retrain_without)
        data = json.dumps(rundir.json_safe(summary), indent=2, allow_nan=False) + "\n"
        rundir.atomic_write(self.dir / rundir.SUMMARY, data.encode())
        return summary

    def retrain_without(self, peer: int) -> np.ndarray:
        """Final heads ``[N, P]`` of this scenario retrained with ``peer`` absent, in
        ``fedsim.probes.retrain_dir(self.dir, peer)``: the retraining the unlearning probe is handed
        (so the probes never import the runner)."""
        from fedsim.probes import retrain_dir

        sub = Run(self.sc, retrain_dir(self.dir, peer), absent=[peer], run_probes=False)
        sub.create_dir(overwrite=True)
        sub.execute()
        return np.asarray(sub.final_params)

    def _write_metrics(self, mf, rec: dict[str, Any]) -> None:
        """Append one strict-JSON line (non-finite values as null, :func:`fedsim.rundir.metrics_line`)
        and keep the running line count and sha256 a checkpoint records."""
        line = rundir.metrics_line(rec)
        with rundir.writing(self.dir / rundir.METRICS):
            mf.write(line)
            mf.flush()
        self._metrics_hash.update(line)
        self._metrics_lines += 1

    def _write_timing(self, r: int, seconds: float) -> None:
        path = self.dir / "timings.jsonl"
        with rundir.writing(path), open(path, "a") as tf:
            tf.write(json.dumps({"round": r, "seconds": round(seconds, 4)}) + "\n")

    def _sync(self, mf) -> None:
        """Metrics on disk before the checkpoint that counts them (else a crash could leave a
        checkpoint ahead of its metrics, which resume would refuse)."""
        with rundir.writing(self.dir / rundir.METRICS):
            os.fsync(mf.fileno())

    def _out_degree(self, prep: Prepared) -> float:
        sc = self.sc
        if sc.mode == "federated":
            return 1.0
        if sc.topology.kind == "push_gossip":
            return float(sc.topology.fanout)
        return float(prep.info["mean_in_degree"])

    def _evaluate(self, prep: Prepared, backend, groups, server, honest_ids: np.ndarray, r: int) -> dict[str, Any]:
        sc = self.sc
        if server is not None and sc.model.whole:  # federated, a whole model (fedsim.whole.WholeServer)
            a, lo = backend.get(server.evaluate.remote(self._features_ref))
            ids = np.asarray([-1])
        elif server is not None:  # federated: the global model is every honest client's model
            from fedsim import heads

            g = torch.tensor(backend.get(server.get_global.remote()))[None]  # a copy: Ray hands out read-only arrays
            w, b = strategies.unflatten(g, (prep.features.num_classes, prep.features.dim), sc.training.bias)
            acc, loss = heads.accuracy_and_loss(
                w.contiguous(), b, torch.from_numpy(prep.features.x_test), torch.from_numpy(prep.features.y_test)
            )
            a, lo, ids = acc.numpy(), loss.numpy(), np.asarray([-1])
        else:
            sample = None
            if sc.evaluation.peers != "all" and sc.evaluation.peers < len(honest_ids):
                keys = crng.uniform(sc.seed, "eval", r, honest_ids)
                sample = np.sort(honest_ids[np.argsort(keys, kind="stable")[: sc.evaluation.peers]])
            res = backend.get([g.evaluate.remote(sample) for g in groups])
            a = np.concatenate([x["accuracy"] for x in res])
            lo = np.concatenate([x["loss"] for x in res])
            ids = np.concatenate([x["ids"] for x in res])
        out = {
            "accuracy_mean": round(float(a.mean()), 6),
            "accuracy_min": round(float(a.min()), 6),
            "accuracy_max": round(float(a.max()), 6),
            "accuracy_std": round(float(a.std()), 6),
            "test_loss": round(float(lo.mean()), 6),
            "evaluated_peers": int(len(a)),
        }
        if sc.evaluation.per_peer:
            out["per_peer"] = {str(int(i)): round(float(x), 6) for i, x in zip(ids, a, strict=True)}
        return out

    def _checkpoint(self, backend, groups, server, r: int) -> None:
        """Save the state after round ``r`` (:func:`fedsim.rundir.write_checkpoint`): tensors only,
        with the scenario fingerprint and the count and sha256 of the metrics lines written so far."""
        fp = self._fingerprint()
        meta = {
            "format": rundir.CHECKPOINT_FORMAT,
            "round": r,
            "metrics_lines": self._metrics_lines,
            "metrics_sha256": self._metrics_hash.hexdigest(),
            "scenario": fp,
            "scenario_sha256": rundir.fingerprint_sha256(fp),
        }
        state = {
            "groups": _merge_group_states(backend.get([g.get_state.remote() for g in groups])),
            "server": backend.get(server.get_state.remote()) if server is not None else None,
        }
        rundir.write_checkpoint(self.dir / rundir.CHECKPOINT, meta, state)

    def _timings(self) -> list[dict[str, Any]]:
        p = self.dir / "timings.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []

    def _summary(self, prep: Prepared) -> dict[str, Any]:
        recs = [json.loads(x) for x in (self.dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        evals = [x for x in recs if "accuracy_mean" in x]
        last = evals[-1] if evals else {}
        return {
            "name": self.sc.name,
            "rounds": self.sc.rounds,
            "mode": self.sc.mode,
            "strategy": self.sc.strategy.name,
            "exchanges": strategies.REGISTRY[self.sc.strategy.name].exchanges,  # what bytes_sent counts
            "attack": self.sc.peers.attack.name,
            "peers": self.sc.peers.count,
            "byzantine": int(prep.byzantine.sum()),
            "final_accuracy_mean": last.get("accuracy_mean"),
            "final_accuracy_min": last.get("accuracy_min"),
            "final_accuracy_max": last.get("accuracy_max"),
            "bytes_sent_total": int(sum(x["bytes_sent_total"] for x in recs)),
            "wall_seconds_rounds": round(sum(x["seconds"] for x in self._timings()), 3),
            "f": prep.f,
            "num_params": prep.num_params,
        }
