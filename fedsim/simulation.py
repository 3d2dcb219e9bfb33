"""The simulation: started peer groups (and the federated server) that yield one
:class:`RoundRecord` per round (docs/architecture.md, "The data path, once").

A round is: every group trains (decentralized: each hosted peer's local steps; federated: the
sampled clients from the global head) → the groups (or the server) aggregate what each peer
hears → the driver sums losses and counts, computes bytes, and evaluates every
``evaluation.every`` rounds. This module owns the backend's call syntax (``.remote()``/``get``)
and the shape of a metrics record; it writes no file. The run directory, ``metrics.jsonl``,
checkpoints, progress, Ctrl-C and stopping early live around it (:mod:`fedsim.runner`,
:mod:`fedsim.runfiles`, :mod:`fedsim.callbacks`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import strategies
from fedsim import limits, ray_outbox, routing
from fedsim import rng as crng
from fedsim.errors import CorruptFileError
from fedsim.peers import PeerGroup
from fedsim.round_record import PHASES, RoundRecord  # noqa: F401  (re-exported)
from fedsim.runfacts import sends_per_round, sent_messages
from fedsim.scenario import Scenario, sampled_clients
from fedsim.server import Server
from fedsim.threads import ray_server_threads, torch_threads

if TYPE_CHECKING:
    from fedsim.prepare import Prepared

class Simulation:
    """The peer groups of ``prep`` (and its federated server) started on ``backend``.

    :meth:`rounds` yields a :class:`RoundRecord` per round; :meth:`state`/:meth:`restore` are
    what a checkpoint holds (independent of how peers are split over groups);
    :meth:`final_params` the heads after the last round. :meth:`close` frees the actors."""

    def __init__(
        self, sc: Scenario, prep: Prepared, backend: Any, record_messages: int = 0, keep_train: bool = True
    ) -> None:
        """``keep_train`` False: once every group copied its rows, ``prep.features`` keeps an empty
        ``x_train`` (the driver's copy of the training features freed: 132 MB for MNIST, 4x that for
        the 100,000-peer benchmark), decentralized also an empty ``x_test``, ``y_test`` (the groups
        evaluate); only a probe context reads them after this (the runner keeps them for its
        probes, or when asked: :class:`fedsim.runner.Run`'s ``keep_train``)."""
        self.sc, self.prep, self.backend = sc, prep, backend
        # the last ``record_messages`` rounds' RoundRecords carry the heads every peer sent
        # (RoundRecord.messages): the probes that read the gossip (fedsim.runner.message_window)
        self.record_messages = record_messages
        feats = prep.features
        # the test set (kept: evaluation reads it) and the training arrays (dropped once every group
        # copied its rows) apart
        self.features_ref = backend.put({"x_test": feats.x_test, "y_test": feats.y_test})
        # on Ray on one host, the training features and the round messages through shared memory
        # (fedsim.ray_outbox): the features in the driver's outbox, closed once every group copied its rows
        outboxes = ray_outbox.usable(backend, sc.engine.ray_shared_memory)
        train = {"x_train": feats.x_train, "y_train": feats.y_train}
        feature_box, train_ref = ray_outbox.share(train) if outboxes else (None, backend.put(train))
        del train
        if not keep_train:  # the driver's arrays: on Ray copied into the object store just now, in-process
            # held by the two dicts until every group copied its rows (a slice would keep the storage)
            emptied = ("x_train",) if sc.mode == "federated" else ("x_train", "x_test", "y_test")
            # decentralized, the groups evaluate on their own test set (Ray: the object store's copy; the
            # driver's, 22 MiB for MNIST, was read by nothing after this); a federated driver evaluates
            arrays = {k: getattr(feats, k) for k in emptied}
            prep.features = dataclasses.replace(
                feats, **{k: np.empty((0, *a.shape[1:]), dtype=a.dtype) for k, a in arrays.items()}
            )
            del arrays
        del feats  # (else this frame keeps the driver's arrays until every actor is built: the start-up peak)
        try:
            group_cls, server_cls = PeerGroup, Server
            if sc.model.whole:
                from fedsim.whole import WholePeerGroup, WholeServer

                group_cls, server_cls = WholePeerGroup, WholeServer
            if outboxes:
                group_cls, server_cls = ray_outbox.with_outbox(group_cls), ray_outbox.with_outbox(server_cls)
            cpus = sc.engine.cpus_per_actor
            # decentralized on Ray the groups send views of their heads (copied into the object store, or
            # the group's outbox, as train returns); the federated server joins the messages itself
            views = bool(backend.copies_returns) and sc.mode == "decentralized"
            self.groups: list[Any] = [
                backend.actor(group_cls, dataclasses.replace(s, sends_views=views) if views else s, train_ref,
                              self.features_ref, num_cpus=cpus) for s in prep.setups
            ]
            server_setup = prep.server_setup
            if server_setup is not None and backend.name == "ray":  # its own process: threads while the groups wait
                server_setup = dataclasses.replace(server_setup, threads=ray_server_threads(
                    sc, server_setup.threads, backend.single_host()))
            self.server: Any = (
                backend.actor(server_cls, server_setup, *prep.root, num_cpus=cpus) if server_setup else None
            )
            # each actor's oneMKL branch (fedsim.mkl_branch.current), once every actor is built: the run
            # records them and warns where they differ from the driver's (fedsim.runner.Run)
            actors = [*self.groups, *([self.server] if self.server is not None else [])]
            self.mkl_branches: list[str | None] = backend.get([a.mkl_branch.remote() for a in actors])
            # the driver's reader of the outboxes (it reads the messages it records); whether they are used
            self.inbox = ray_outbox.Inbox()
            self.outboxes = outboxes and ray_outbox.connect(backend, actors, self.groups, self.inbox)
        finally:  # (also when an actor fails to start: the features' outbox is not kept open)
            del train_ref
            if feature_box is not None:
                feature_box.close()
        # the server's global model after the last aggregation (what the next round trains from), as
        # that call's reply; None: ask the server (round 0, after a restore)
        self._global_ref: Any = None
        self.honest_ids = np.flatnonzero(~prep.byzantine)

    # ------------------------------------------------------------------ rounds
    def rounds(self, start: int = 0) -> Iterator[RoundRecord]:
        """Rounds ``start .. sc.rounds - 1``, one record each."""
        for r in range(start, self.sc.rounds):
            yield self.step(r)

    def step(self, r: int) -> RoundRecord:
        """Run round ``r``: train, aggregate, and evaluate when it is an evaluation round."""
        sc, backend, server = self.sc, self.backend, self.server
        t0 = time.perf_counter()
        if server is not None and self._global_ref is None:
            self._global_ref = server.get_global.remote()
        g_ref = self._global_ref if server is not None else None
        sampled = sampled_clients(sc, r)  # None: every client (and every decentralized peer)
        if sampled is None:
            trained = [g.train.options(num_returns=2).remote(r, g_ref) for g in self.groups]
        else:
            trained = [g.train.options(num_returns=2).remote(r, g_ref, sampled) for g in self.groups]
        params_refs = [t[0] for t in trained]
        # on Ray the aggregation is submitted before the driver waits: it starts as soon as the
        # heads exist, and the driver waits once per round (in-process a call runs when made, so
        # the order stays train, wait, aggregate and the phases are timed apart)
        stats_refs = self._aggregate(r, params_refs, sampled) if backend.lazy else None
        losses = backend.get([t[1] for t in trained])
        t1 = time.perf_counter()
        # copied before the in-process aggregation overwrites the heads (a bias-free head's rows are views)
        keep = self.record_messages and r >= sc.rounds - self.record_messages
        msgs = (
            np.concatenate([routing.decode(m).float().numpy() for m in self.inbox.resolve(backend.get(params_refs))])
            if keep else None
        )
        stats = backend.get(stats_refs if stats_refs is not None else self._aggregate(r, params_refs, sampled))
        t2 = time.perf_counter()
        # the messages are not read again: in-process these are the arrays (both groups' messages:
        # 220 MB at 10,000 peers), freed before the evaluation rather than with the round
        del trained, params_refs
        rec = round_metrics(sc, self.prep, r, losses, stats, sampled)
        t_eval = 0.0
        if is_eval_round(sc, r):
            rec |= self.evaluate(r)
            t_eval = time.perf_counter() - t2
        return RoundRecord(r, rec, {"train": t1 - t0, "aggregate": t2 - t1, "evaluate": t_eval}, msgs)

    def _aggregate(self, r: int, params_refs: list[Any], sampled: np.ndarray | None) -> list[Any]:
        """Submit round ``r``'s aggregation of the groups' heads ``params_refs``: every group's
        (decentralized) or the server's, which also hands back the new global model for the next
        round (:meth:`fedsim.server.Server.aggregate_and_global`). Returns the stats' refs."""
        if self.server is None:
            return [g.aggregate.remote(r, *params_refs) for g in self.groups]
        kw = {} if sampled is None else {"sampled": sampled}
        stats_ref, self._global_ref = self.server.aggregate_and_global.options(num_returns=2).remote(
            r, *params_refs, **kw
        )
        return [stats_ref]

    def evaluate(self, r: int) -> dict[str, Any]:
        """Round ``r``'s accuracy fields: the honest peers on the test set (``evaluation.peers``
        of them, drawn per round), or in federated mode the global model."""
        sc, backend, server, prep = self.sc, self.backend, self.server, self.prep
        if server is not None and sc.model.whole:  # federated, a whole model (fedsim.whole.WholeServer)
            a, lo = backend.get(server.evaluate.remote(self.features_ref))
            ids = np.asarray([-1])
        elif server is not None:  # federated: the global model is every honest client's model
            g_ref = self._global_ref if self._global_ref is not None else server.get_global.remote()  # the last reply's
            a, lo = global_head_scores(sc, prep.features, backend.get(g_ref))
            ids = np.asarray([-1])
        else:
            sample = None
            honest = self.honest_ids
            if sc.evaluation.peers != "all" and sc.evaluation.peers < len(honest):
                keys = crng.uniform(sc.seed, "eval", r, honest)
                sample = np.sort(honest[np.argsort(keys, kind="stable")[: sc.evaluation.peers]])
            res = backend.get([g.evaluate.remote(sample) for g in self.groups])
            a = np.concatenate([x["accuracy"] for x in res])
            lo = np.concatenate([x["loss"] for x in res])
            ids = np.concatenate([x["ids"] for x in res])
        return accuracy_fields(sc, a, lo, ids)

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Every group's state merged in peer order, and the server's: what a checkpoint holds."""
        backend = self.backend
        return {
            "groups": merge_group_states(self._group_states(), self._group_sizes()),
            "server": backend.get(self.server.get_state.remote()) if self.server is not None else None,
        }

    def _group_sizes(self) -> list[int]:
        return [len(s.train_idx) for s in self.prep.setups]

    def _group_states(self) -> Iterator[dict[str, Any] | Iterator[dict[str, Any]]]:
        """Every group's :meth:`PeerGroup.get_state`, one at a time, for :func:`merge_group_states`.
        In-process each group's whole state, asked when the previous one is merged (its copies are
        the group's own: nothing is pickled). On Ray in slices of FINAL_SLICE_BYTES of rows (its
        ``get_state("meta")`` gives their size), one call in flight at a time, each a compact copy;
        the shared entries with the first group's first slice: no group's whole state is copied at
        once (it sat in the actor's heap, in Ray's object store and in the driver together: every
        group's, all asked at once, before; 2.3 GB per tensor at 100,000 peers)."""
        backend = self.backend
        for i, (g, n) in enumerate(zip(self.groups, self._group_sizes(), strict=True)):
            if not backend.lazy:
                yield backend.get(g.get_state.remote())
                continue
            yield self._state_slices(g, n, slice_rows(backend.get(g.get_state.remote("meta"))), i == 0)

    def _state_slices(self, g: Any, n: int, step: int, shared: bool) -> Iterator[dict[str, Any]]:
        """Group ``g``'s state (``n`` peers) in slices of ``step`` rows, fetched one at a time as they
        are asked for; ``shared``: the shared entries with the first."""
        for lo in range(0, n, step):
            yield self.backend.get(g.get_state.remote("cpu", lo, min(n, lo + step), shared and lo == 0))

    def restore(self, state: Any, source: Path) -> None:
        """Load a checkpoint's :meth:`state` into the fresh actors, after checking it has this
        scenario's entries and shapes (else :class:`~fedsim.errors.CorruptFileError` naming ``source``)."""
        backend, server = self.backend, self.server
        # the fresh state's entries, shapes and dtypes only, on the meta device: no group copies its
        # state (a merge of the copies held every peer's state once more, 0.43 GiB at 10,000 peers,
        # besides the checkpoint's; then each group's copy, on Ray through the object store)
        fresh = merge_group_states((backend.get(g.get_state.remote("meta")) for g in self.groups), self._group_sizes())
        if not isinstance(state, dict) or state.keys() != {"groups", "server"}:
            raise CorruptFileError(f"{source}: expected the groups' and the server's state")
        check_state(source, "peers'", state["groups"], fresh)
        # each group its part, one group at a time (all at once put every part in the object store
        # together); on Ray in slices of FINAL_SLICE_BYTES of rows, each a compact copy (a pickled
        # slice of the loaded tensors carries its whole storage: every peer's rows, once per group)
        sizes = self._group_sizes()
        for g, st, n in zip(self.groups, split_group_state(state["groups"], sizes), sizes, strict=True):
            if not backend.lazy:  # in-process: the views themselves, nothing copied
                backend.get(g.set_state.remote(st))
                continue
            rows = {k: v for k, v in st.items() if k in PeerGroup.PER_PEER_STATE and isinstance(v, torch.Tensor)}
            step = slice_rows(rows)
            for lo in range(0, n, step):
                backend.get(g.stage_rows.remote(lo, n, {k: v[lo : lo + step].clone() for k, v in rows.items()}))
            backend.get(g.set_staged_state.remote({k: v for k, v in st.items() if k not in rows}))
        if server is not None:
            check_state(source, "server's", state["server"], backend.get(server.get_state.remote()))
            backend.get(server.set_state.remote(state["server"]))
            self._global_ref = None  # the restored global model: ask the server next round
        elif state["server"] is not None:
            raise CorruptFileError(f"{source}: holds a server's state, but this run has no server")

    def final_params(self) -> np.ndarray:
        """The flattened heads ``[peers, P]``; in federated mode every row is the global model."""
        if self.server is not None:  # (the groups' own rows are not asked for: every row is the global model)
            g = self.backend.get(self.server.get_global.remote())
            return np.broadcast_to(g, (self.sc.peers.count, *np.shape(g))).copy()
        # written slice by slice into one array (FINAL_SLICE_BYTES of float32 rows a call, one call at a
        # time): besides it one slice is alive, in the group, in Ray's object store and here (a group's
        # whole [p, P] float32 copy, in its heap and in the object store, was the peak of a 10,000-peer
        # run on one Ray actor, docs/performance.md; a concatenation of every group's held them all)
        backend = self.backend
        rows = max(1, limits.FINAL_SLICE_BYTES // (4 * max(1, self.prep.num_params)))
        out = np.empty((0, 0), dtype=np.float32)
        start = 0
        for g, n in zip(self.groups, self._group_sizes(), strict=True):
            for lo in range(0, n, rows):
                part = backend.get(g.params.remote(lo, min(n, lo + rows)))
                if start == 0:
                    out = np.empty((self.sc.peers.count, *part.shape[1:]), dtype=part.dtype)
                out[start : start + len(part)] = part
                start += len(part)
                del part
        assert start == len(out)
        return out

    def recorded_gradients(self) -> np.ndarray | None:
        """The unlearning probe's leaver's first-epoch gradients (recorded by its group), if any."""
        rec = [g for g in self.backend.get([g.recorded_gradients.remote() for g in self.groups]) if g is not None]
        return rec[0] if rec else None

    def close(self) -> None:
        """Free the actors' CPUs (a shared Ray session may run more after this one)."""
        self.backend.kill([*self.groups, *([self.server] if self.server is not None else [])])
        self.groups, self.server = [], None
        self.inbox.close()


# ---------------------------------------------------------------------- a round's record, shared
# The functions below turn a round's results into its metrics record. The simulation calls them,
# and so does the Flower server (fedsim.flower.strategy) with the results it collected from the
# devices' messages: one shape of record, one rounding, whatever engine produced the numbers.


def is_eval_round(sc: Scenario, r: int) -> bool:
    """Whether round ``r`` is evaluated: every ``evaluation.every`` rounds and the last."""
    return (r + 1) % sc.evaluation.every == 0 or r == sc.rounds - 1


def train_loss_sum(losses: Sequence[np.ndarray]) -> float:
    """The summed train loss of the peers in ``losses``: each group's float32 losses of its honest
    peers that trained, groups in peer order (they host consecutive peers). One float32 sum over all
    of them in peer order, on one torch thread (above 32,768 values torch splits a sum over its
    threads): the same bits however peers are spread over groups and threads. With one group this
    is the sum that group used to return."""
    flat = [np.asarray(v, dtype=np.float32).reshape(-1) for v in losses]
    v = torch.from_numpy(np.concatenate(flat)) if flat else torch.zeros(0)
    with torch_threads(1):
        return float(v.sum())


def round_metrics(
    sc: Scenario,
    prep: Prepared,
    r: int,
    losses: Sequence[np.ndarray],
    stats: Sequence[Mapping[str, int]],
    sampled: np.ndarray | None = None,
) -> dict[str, Any]:
    """Round ``r``'s metrics record before evaluation: ``losses`` are the honest peers' train losses
    that :meth:`PeerGroup.train` returns (one array per group in peer order, or one in all; summed
    by :func:`train_loss_sum`), ``stats`` the aggregators' ``dropped``/``skipped`` counts,
    ``sampled`` the clients this round trained (None: all)."""
    bpm = prep.bytes_per_message
    honest_ids = np.flatnonzero(~np.asarray(prep.byzantine, dtype=bool))
    deg = sends_per_round(sc, prep.info["mean_in_degree"])
    senders = sc.peers.count if sampled is None else int(sampled.sum())
    trainers = len(honest_ids) if sampled is None else int(sampled[honest_ids].sum())
    rec: dict[str, Any] = {
        "round": r,
        "group": "honest",
        "train_loss": round(train_loss_sum(losses) / max(trainers, 1), 6),
        "dropped": sum(s["dropped"] for s in stats),
        "skipped": sum(s["skipped"] for s in stats),
        "bytes_sent_per_peer": int(deg * bpm),
        "bytes_sent_total": int(deg * bpm * sc.peers.count),
    }
    if sampled is not None:  # only when fewer than all clients: an unsampled run's metrics are unchanged
        # only the sampled clients send; bytes_sent_per_peer stays the mean over all peers
        rec |= {
            "bytes_sent_per_peer": int(bpm * senders / sc.peers.count),
            "bytes_sent_total": int(bpm * senders),
            "clients_sampled": senders,
            "honest_clients_sampled": trainers,
        }
    if prep.silent is not None and prep.silent.any():  # a crash attack's peers send nothing: 0 bytes
        sent = sent_messages(sc, prep.topology, prep.silent, sampled)
        rec |= {"bytes_sent_per_peer": int(bpm * sent / sc.peers.count), "bytes_sent_total": int(bpm * sent)}
    return rec


def global_head_scores(sc: Scenario, features: Any, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Federated evaluation: the flattened global head on the test set, as (accuracy, loss) arrays
    of one entry each."""
    from fedsim import heads

    g = torch.tensor(np.asarray(head))[None]  # a copy: Ray hands out read-only arrays
    w, b = strategies.unflatten(g, (features.num_classes, features.dim), sc.training.bias)
    acc, loss = heads.accuracy_and_loss(
        w.contiguous(), b, torch.from_numpy(features.x_test), torch.from_numpy(features.y_test)
    )
    return acc.numpy(), loss.numpy()


def accuracy_fields(sc: Scenario, a: np.ndarray, lo: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """A round's accuracy fields from the evaluated peers' accuracies ``a`` and test losses ``lo``
    (``ids``: their peer ids, -1 for the global model; listed when ``evaluation.per_peer``)."""
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


def slice_rows(state: dict[str, Any]) -> int:
    """How many peers' rows of ``state``'s per-peer tensors (any device, "meta" too) make
    FINAL_SLICE_BYTES (at least one): the slices a checkpoint on Ray is fetched and restored in."""
    row = sum(v[:1].nbytes for k, v in state.items() if k in PeerGroup.PER_PEER_STATE and isinstance(v, torch.Tensor))
    return max(1, limits.FINAL_SLICE_BYTES // max(1, row))


def merge_group_states(
    states: Iterable[dict[str, Any] | Iterable[dict[str, Any]]], sizes: Sequence[int]
) -> dict[str, Any]:
    """Every group's state as one: per-peer tensors in peer order, the shared entries (the same in
    every group) once; the groups host ``sizes`` peers each (in order). Independent of how peers are
    split over groups. Written group by group into tensors of all the peers' rows, as ``states``
    yields them: one group's state alive at a time besides the merged one (a concatenation of them
    all held every group's copy too: 0.21 GiB more at a 10,000-peer checkpoint, docs/performance.md).
    A group's state is a dict, or an iterable of slices of it: dicts of its per-peer tensors' next
    rows (:meth:`PeerGroup.get_state` with ``lo``, ``hi``; the first group's first slice also holds
    the shared entries), one slice alive at a time."""
    per_peer = PeerGroup.PER_PEER_STATE
    merged: dict[str, Any] = {}
    first = i = 0
    for group in states:  # (not enumerate: its reused result tuple would keep the previous state alive)
        n, got = sizes[i], 0
        for st in [group] if isinstance(group, dict) else group:
            if not merged:
                merged = {k: v for k, v in st.items() if k not in per_peer}
                merged |= {k: st[k].new_empty((sum(sizes), *st[k].shape[1:])) for k in per_peer if k in st}
            m = 0
            for k in per_peer:
                if k in merged:
                    m = st[k].shape[0]
                    if got + m > n or (isinstance(group, dict) and m != n):
                        raise ValueError(f"group {i}'s {k!r} has {got + m} rows, expected {n}")
                    merged[k][first + got : first + got + m] = st[k]
            got += m
            del st  # (before the next slice is fetched)
        if got != n:
            raise ValueError(f"group {i}'s state has {got} rows, expected {n}")
        first += n
        i += 1
        del group  # (before the next group's is fetched)
    if first != sum(sizes):
        raise ValueError(f"the groups' states hold {first} peers, expected {sum(sizes)}")
    return merged


def split_group_state(merged: dict[str, Any], sizes: list[int]) -> list[dict[str, Any]]:
    """:func:`merge_group_states` undone for groups hosting ``sizes`` peers each (in order)."""
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


def check_state(path: Path, what: str, loaded: Any, fresh: dict[str, Any]) -> None:
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
