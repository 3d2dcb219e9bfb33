"""The round loop (DESIGN.md "The data path, once"):

local steps → Byzantine peers forge → the topology says who hears whom → each honest peer
aggregates → metrics. Federated mode is the same loop with a star topology and one server.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import strategies
from fedsim import rng as crng
from fedsim.backend import make_backend
from fedsim.errors import RunDirExistsError, RunInterruptedError  # noqa: F401  (re-exported)
from fedsim.features import Features, load_features
from fedsim.models.backbones import BACKBONES
from fedsim.partition import make_partition
from fedsim.peers import GroupSetup, PeerGroup, Server, held_classes
from fedsim.scenario import Scenario, default_f
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


def _backbone_param_count(name: str) -> int:
    spec = BACKBONES[name]
    return 0 if spec.build is None else sum(p.numel() for p in spec.build().parameters())


def prepare(sc: Scenario, log: Callable[[str], None] | None = None, absent: list[int] | None = None) -> Prepared:
    """Features, partition, Byzantine placement and the per-actor set-ups (no actor started).

    ``absent`` peers take no part (their messages never arrive; the unlearning probe's
    "retrained without that peer" gold standard)."""
    feats = load_features(sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir, log)
    n = sc.peers.count
    pt = sc.partition
    byz = np.zeros(n, dtype=bool)
    byz[crng.numpy_generator(sc.seed, "byzantine").permutation(n)[: sc.peers.num_byzantine]] = True
    part = make_partition(
        pt.kind,
        feats.y_train,
        n,
        sc.seed,
        alpha=pt.alpha,
        k=pt.k,
        window=pt.window,
        beta=pt.beta,
        min_size=pt.min_size,
        val_fraction=pt.val_fraction,
        per_class=pt.per_class,
        all_classes=byz if pt.byzantine_classes == "all" else None,
    )
    topo = Topology(
        sc.topology.kind, n, sc.seed, degree=sc.topology.degree, p=sc.topology.p, fanout=sc.topology.fanout
    ).build()
    in_degree = (
        float(n - 1) if sc.mode == "federated" else float(np.mean(topo.degrees(0))) if sc.topology.kind != "star" else n
    )
    f = default_f(sc, in_degree if sc.mode == "decentralized" else n)
    params = dict(sc.strategy.params)
    if sc.mode == "federated" and "include_own" in getattr(
        strategies.REGISTRY[sc.strategy.name], "__dataclass_fields__", {}
    ):
        params.setdefault("include_own", False)  # a server averages its clients, not the old global model
    c, d = feats.num_classes, feats.dim
    num_params = c * d + (c if sc.training.bias else 0)
    rule_cls = strategies.REGISTRY[sc.strategy.name]
    # the class sets peers compare when they connect (Bristle's private-set intersection), for every peer
    classes = held_classes(feats.y_train, part.train, part.val, c) if "overlap" in rule_cls.needs else None
    extra = _backbone_param_count(sc.backbone.name) if rule_cls.exchanges == "full_model" else 0
    largest_shard = max(len(t) for t in part.train)
    threads = sc.engine.cpus_per_actor
    if sc.engine.backend == "local":  # in-process, the groups run one after another: each may use every CPU
        threads = min(threads * sc.engine.num_actors, os.cpu_count() or 1)  # but no more than the machine has
    common = dict(
        shard_pad=largest_shard if largest_shard <= sc.training.batch_size else 0,
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
        attack=sc.peers.attack.model_dump(),
        topology=sc.topology.model_dump(),
        classes=classes,
    )
    actors = min(sc.engine.num_actors, n)
    blocks = np.array_split(np.arange(n), actors)
    setups = [
        GroupSetup(first=int(b[0]), train_idx=[part.train[i] for i in b], val_idx=[part.val[i] for i in b], **common)
        for b in blocks
    ]
    server = GroupSetup(first=0, train_idx=[], val_idx=[], **common) if sc.mode == "federated" else None
    root = None
    if sc.mode == "federated":
        ridx = crng.numpy_generator(sc.seed, "root_set").choice(
            len(feats.y_train), size=min(100, len(feats.y_train)), replace=False
        )
        root = (feats.x_train[ridx], feats.y_train[ridx])
    info = {
        "peers": n,
        "byzantine_ids": np.flatnonzero(byz).tolist(),
        "f": f,
        "num_params": num_params,
        "feature_dim": d,
        "classes": c,
        "mean_in_degree": in_degree,
        "actors": actors,
        "train_samples_per_peer": [int(len(t)) for t in part.train],
    }
    return Prepared(sc, feats, setups, server, byz, f, num_params, FLOAT_BYTES * (num_params + extra), root, info)


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
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    from fedsim import __version__

    out["fedsim"] = __version__
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Run:
    """One scenario run writing to ``<output.dir>/<name>/``."""

    def __init__(self, sc: Scenario, run_dir: Path | None = None, absent: list[int] | None = None,
                 run_probes: bool = True) -> None:
        self.sc = sc
        self.dir = Path(run_dir) if run_dir else Path(sc.output.dir) / sc.name
        self.absent = absent
        self.run_probes = run_probes

    # ------------------------------------------------------------------ output dir
    def create_dir(self, overwrite: bool = False) -> None:
        if self.dir.exists() and any(self.dir.iterdir()):
            if not overwrite:
                raise RunDirExistsError(
                    f"{self.dir} exists; pass --overwrite, choose another name, or --resume {self.dir}"
                )
            shutil.rmtree(self.dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-test"
            probe.write_bytes(b"x" * 1024)
            probe.unlink()
        except OSError as e:
            raise OSError(f"cannot write to output directory {self.dir}: {e.strerror or e}") from None
        free = shutil.disk_usage(self.dir).free
        if free < 50 * 2**20:
            raise OSError(f"only {free / 2**20:.0f} MiB free at {self.dir}; need at least 50 MiB")
        (self.dir / "scenario.yaml").write_text(yaml.safe_dump(self.sc.model_dump(mode="json"), sort_keys=False))
        (self.dir / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")

    # ------------------------------------------------------------------ main loop
    def execute(
        self,
        progress: Callable[[int, dict], None] | None = None,
        log: Callable[[str], None] | None = None,
        resume: bool = False,
        stop_after: int | None = None,
    ) -> dict[str, Any]:
        """Run (or resume) all rounds; returns the summary. ``stop_after`` ends early after that
        round (tests use it to simulate a kill)."""
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
        ckpt = self.dir / "checkpoint.pt"
        if ckpt.exists():
            r = torch.load(ckpt, weights_only=False)["round"]
            return f"Continue from its checkpoint (after round {r}) with: fedsim run --resume {self.dir}"
        return f"No checkpoint was written yet (set checkpoint.every); fedsim run --resume {self.dir} restarts it"

    def _loop(self, prep: Prepared, backend, progress, resume: bool, stop_after: int | None) -> dict[str, Any]:
        sc = self.sc
        feats = prep.features
        fref = backend.put(
            {"x_train": feats.x_train, "y_train": feats.y_train, "x_test": feats.x_test, "y_test": feats.y_test}
        )
        groups = [backend.actor(PeerGroup, s, fref, num_cpus=sc.engine.cpus_per_actor) for s in prep.setups]
        self.groups = groups
        server = (
            backend.actor(Server, prep.server_setup, *prep.root, num_cpus=sc.engine.cpus_per_actor)
            if prep.server_setup
            else None
        )
        self.server = server
        backend.get([g.ping.remote() for g in groups])
        start, metrics_path = 0, self.dir / "metrics.jsonl"
        ckpt = self.dir / "checkpoint.pt"
        if resume and ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            backend.get([g.set_state.remote(st) for g, st in zip(groups, state["groups"], strict=True)])
            if server is not None:
                backend.get(server.set_state.remote(state["server"]))
            start = state["round"] + 1
            lines = metrics_path.read_bytes().splitlines(keepends=True)[: state["metrics_lines"]]
            _atomic_write(metrics_path, b"".join(lines))
        elif resume:  # nothing saved yet: start over
            metrics_path.write_bytes(b"")
        if resume:
            tp = self.dir / "timings.jsonl"
            if tp.exists():
                kept = [x for x in tp.read_text().splitlines() if x.strip() and json.loads(x)["round"] < start]
                tp.write_text("".join(k + "\n" for k in kept))
        honest_ids = np.flatnonzero(~prep.byzantine)
        out_degree = self._out_degree(prep)
        history: list[dict[str, Any]] = []
        with open(metrics_path, "ab") as mf:
            for r in range(start, sc.rounds):
                t0 = time.perf_counter()
                g_ref = server.get_global.remote() if server is not None else None
                trained = [g.train.options(num_returns=2).remote(r, g_ref) for g in groups]
                params_refs = [t[0] for t in trained]
                if server is not None:
                    stats = [backend.get(server.aggregate.remote(r, *params_refs))]
                else:
                    stats = backend.get([g.aggregate.remote(r, *params_refs) for g in groups])
                t_round = time.perf_counter() - t0
                train_loss = sum(backend.get([t[1] for t in trained])) / max(len(honest_ids), 1)
                rec: dict[str, Any] = {
                    "round": r,
                    "group": "honest",
                    "train_loss": round(float(train_loss), 6),
                    "dropped": sum(s["dropped"] for s in stats),
                    "skipped": sum(s["skipped"] for s in stats),
                    "bytes_sent_per_peer": int(out_degree * prep.bytes_per_message),
                    "bytes_sent_total": int(out_degree * prep.bytes_per_message * sc.peers.count),
                }
                if (r + 1) % sc.evaluation.every == 0 or r == sc.rounds - 1:
                    rec |= self._evaluate(prep, backend, groups, server, honest_ids, r)
                mf.write((json.dumps(rec, sort_keys=True) + "\n").encode())
                with open(
                    self.dir / "timings.jsonl", "a"
                ) as tf:  # kept apart: metrics.jsonl is reproducible to the byte
                    tf.write(json.dumps({"round": r, "seconds": round(t_round, 4)}) + "\n")
                mf.flush()
                history.append(rec)
                if progress:
                    progress(r, rec)
                if sc.checkpoint.every and (r + 1) % sc.checkpoint.every == 0:
                    mf.flush()
                    self._checkpoint(backend, groups, server, r)
                if stop_after is not None and r >= stop_after:
                    return {"stopped_after": r}
                if self._stop_requested:  # Ctrl-C: finish the round, save, stop
                    self._checkpoint(backend, groups, server, r)
                    raise RunInterruptedError(f"interrupted after round {r}; checkpoint saved. {self._resume_hint()}")
        summary = self._summary(prep)
        self.final_params = np.concatenate(backend.get([g.params.remote() for g in groups]))
        if server is not None:
            self.final_params = np.broadcast_to(backend.get(server.get_global.remote()), self.final_params.shape).copy()
        self.prepared = prep
        if sc.probes and self.run_probes:
            from fedsim.probes import run_probes

            # heads already fetched: free the actors' CPUs (the unlearning probe retrains on them)
            backend.kill([*groups, *([server] if server is not None else [])])
            self.groups, self.server = [], None

            summary["probes"] = run_probes(self, prep, self.final_params)
        _atomic_write(self.dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        return summary

    def _out_degree(self, prep: Prepared) -> float:
        sc = self.sc
        if sc.mode == "federated":
            return 1.0
        if sc.topology.kind == "push_gossip":
            return float(sc.topology.fanout)
        return float(prep.info["mean_in_degree"])

    def _evaluate(self, prep: Prepared, backend, groups, server, honest_ids: np.ndarray, r: int) -> dict[str, Any]:
        sc = self.sc
        if server is not None:  # federated: the global model is every honest client's model
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
        lines = len((self.dir / "metrics.jsonl").read_bytes().splitlines())
        state = {
            "round": r,
            "metrics_lines": lines,
            "groups": backend.get([g.get_state.remote() for g in groups]),
            "server": backend.get(server.get_state.remote()) if server is not None else None,
        }
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".checkpoint.", suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, self.dir / "checkpoint.pt")

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
