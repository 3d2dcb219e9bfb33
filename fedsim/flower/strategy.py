"""A Flower strategy whose aggregation is any fedsim rule: the Flower server's round loop.

:class:`FedsimStrategy` is a Flower (message API) ``Strategy`` around fedsim's own federated
server, :class:`fedsim.server.Server`: the same zero initial head, the same rule built by
``strategies.build`` and applied through ``strategies.aggregate`` (which drops non-finite rows),
the same FLTrust root set, and — with ``attack-side = "server"`` — the same simulated Byzantine
clients (``forge_messages``). Every connected device trains every round, as in fedsim's
federated mode; replies are put back in partition-id order before the rule sees them.

A reply whose head is missing, of the wrong shape or dtype, or holds NaN/Inf is rejected and
logged (node id, partition id, reason; :mod:`fedsim.flower.replies`); the round completes with
the others.

A round's record is built by the simulation's own code from what the devices sent:
:func:`fedsim.simulation.round_metrics` (train loss, dropped/skipped, bytes),
:func:`fedsim.simulation.global_head_scores` and :func:`fedsim.simulation.accuracy_fields` (the
global head on the test set, every ``evaluation.every`` rounds: :func:`fedsim.simulation.is_eval_round`),
plus the bridge's fields (``received``, ``rejected``, ``quorum``, and with client evaluation
``client_val_*`` and ``eval_rejected``). It is a :class:`~fedsim.simulation.RoundRecord` (phases:
``train`` the devices' train round trip, ``aggregate`` the checks and the rule, ``evaluate`` the
devices' evaluate round trip when one is sent and the global head's test; ``timings.jsonl``'s
``seconds`` is train + aggregate, as for ``fedsim run``) filed as ``fedsim run``
files one (:class:`fedsim.flower.serverfiles.ServerFiles` over :class:`fedsim.runfiles.RoundFiles`),
and ``summary.json`` is :func:`fedsim.runfiles.run_summary` plus the bridge's keys.

Persistence: every ``checkpoint.every`` rounds (the scenario's key) the server writes
``<output-dir>/checkpoint.pt``: the server's state (global head, last forged rows), the round,
the scenario fingerprint, the bridge settings that change results, and the count and sha256 of
the ``metrics.jsonl`` lines written by then. Run config ``resume = true`` (``fedsim flower run
--resume``) continues from it after a SuperLink or ServerApp restart: the file is verified,
``metrics.jsonl`` cut back to the lines it covers, and the rounds after it run as they would
have. The final global head is written to ``final_global.pt`` by the same writer.

Callbacks (:mod:`fedsim.callbacks`, as ``fedsim run`` takes them) see each record once it is filed;
a :class:`~fedsim.callbacks.Stop` before the last round ends the rounds there (checkpointed unless
it says not to) by raising :class:`Stopped`, which :func:`fedsim.flower.server.run_server` turns
into ``{"stopped_after": round}`` or, for Ctrl-C, a :class:`~fedsim.errors.RunInterruptedError`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlib.heads import num_params
from fedsim import rundir
from fedsim.callbacks import Callback, Stop
from fedsim.codehash import code_fingerprint
from fedsim.errors import CorruptFileError
from fedsim.flower import common
from fedsim.flower.common import LOG
from fedsim.flower.grid import TTL_GRACE_S
from fedsim.flower.identity import PartitionAssignment
from fedsim.flower.replies import ReplyCheck, validation_sizes
from fedsim.flower.serverfiles import ServerFiles
from fedsim.runfiles import run_summary
from fedsim.scenario import Scenario, sampled_clients
from fedsim.simulation import (
    RoundRecord,
    accuracy_fields,
    global_head_scores,
    is_eval_round,
    round_metrics,
    train_loss_sum,
)
from fedsim.version import __version__


class Stopped(Exception):  # noqa: N818 - control flow, never shown: run_server turns it into a result
    """The callbacks' :class:`~fedsim.callbacks.Stop` requests after round ``round`` (saved: a checkpoint of it)."""

    def __init__(self, round_: int, stops: list[Stop], saved: bool) -> None:
        super().__init__(round_)
        self.round, self.stops, self.saved = round_, stops, saved


class FedsimStrategy(Strategy):
    """Runs fedsim's federated server over Flower messages (see the module docstring)."""

    def __init__(
        self,
        sc: Scenario,
        prep: Any,
        *,
        attack_side: str = "client",
        client_eval: bool = True,
        eval_piggyback: bool = True,
        node_wait: float = 300.0,
        out_dir: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        assignment: PartitionAssignment | None = None,
        overwrite: bool = False,
        round_timeout: float = 600.0,
        min_replies: int = 1,
        resume: bool = False,
        files: ServerFiles | None = None,
        callbacks: Sequence[Callback] = (),
        allow_version_mismatch: bool = False,
    ) -> None:
        from fedsim.server import Server

        if attack_side not in common.ATTACK_SIDES:
            raise common.BridgeError(f"run config 'attack-side': got {attack_side!r}; allowed: client, server")
        if sampled_clients(sc, 0) is not None:  # fewer than all clients per round
            raise common.BridgeError(
                "scenario sampling: client sampling per round is not implemented on Flower (every connected "
                "device trains each round); remove sampling from the scenario or set sampling.fraction: 1.0"
            )
        self.sc, self.prep = sc, prep
        self.n = sc.peers.count
        self.layer = (prep.features.num_classes, prep.features.dim)
        self.num_params = num_params(self.layer, bool(sc.training.bias))
        setup = prep.server_setup
        if attack_side == "client":  # the devices forge; the server must not forge for them again
            setup = replace(setup, attack=setup.attack.model_copy(update={"name": "none"}))
        # the server process is the ServerApp's, not a simulated group's: its torch threads stay as they are
        # (Server sets the setup's; prepare's count describes the simulation's layout, not this machine)
        setup = replace(setup, threads=torch.get_num_threads())
        self.server = Server(setup, *(prep.root or (None, None)))
        self.attack_side = attack_side
        self.client_eval = client_eval
        self.eval_piggyback = eval_piggyback
        # piggy-backed client evaluation: the record of an evaluated round waits for the next round's
        # train replies, which carry the devices' scores of the global head they received
        self._pending: RoundRecord | None = None
        self._grid: Grid | None = None  # the grid of the last round trip
        self.node_wait = node_wait
        if not 1 <= int(min_replies) <= self.n:
            raise common.BridgeError(f"run config 'min-replies': {min_replies} is not in 1..{self.n} (peers.count)")
        if not round_timeout > 0:
            raise common.BridgeError(f"run config 'round-timeout': {round_timeout} must be positive")
        self.min_replies = int(min_replies)
        self.round_timeout = float(round_timeout)
        self._waited = False  # the full node-wait is spent once, before the first round
        self.clock = clock
        self.honest = ~np.asarray(prep.byzantine, dtype=bool)
        # the replies' checks; partitions bound to nodes first come, kept in memory, by default
        self.replies = ReplyCheck(self.n, self.num_params, assignment or PartitionAssignment(self.n),
                                  validation_sizes(prep), code=code_fingerprint(),
                                  allow_mismatch=allow_version_mismatch)
        self.out_dir = Path(out_dir) if out_dir else None
        self.history: list[dict[str, Any]] = []
        self.callbacks = list(callbacks)
        self._rec: dict[str, Any] = {}  # the round's record so far (aggregate_train, aggregate_evaluate)
        self._phases: dict[str, float] = {}  # and its phase timings
        self._t0 = self._t_round = self._t_aggregated = clock()
        self.offset = 0  # rounds done before this ServerApp started (a resume); Flower counts from 1 again
        # names this run's device states across a resume (a new Flower run): kept in the checkpoint
        self.run_key = secrets.token_hex(8)
        # metrics.jsonl, timings.jsonl, checkpoints: fedsim.runfiles through ServerFiles
        # (``files``: opened by the caller already, the ServerApp's :func:`fedsim.flower.server.run_server`)
        if files is None and self.out_dir is not None:
            files = ServerFiles(self.out_dir, sc)
        self.files = files
        if resume and self.files is None:
            raise common.BridgeError("run config 'resume': needs an output-dir with a checkpoint")
        if self.files is not None:
            self.files.open(resume, overwrite)  # RunDirectory: created or verified, and locked
        if resume:
            self._resume()

    # ------------------------------------------------------------------ Flower's Strategy API
    def summary(self) -> None:
        LOG.info(
            "fedsim strategy %r (%s) over %d clients, f=%d, attack %r on the %s side, head %d×%d",
            self.sc.strategy.name,
            type(self.server.rule).__name__,
            self.n,
            self.server.s.f,
            self.sc.peers.attack.name,
            self.attack_side,
            *self.layer,
        )

    def initial_arrays(self) -> ArrayRecord:
        return ArrayRecord({common.HEAD: Array(self.server.get_global().copy())})

    def _nodes(self, grid: Grid) -> list[int]:
        """The connected devices. Before the first round, wait (up to ``node-wait``) for all
        ``peers.count``; later, wait only while fewer than ``min-replies`` are connected, so a device
        known to be gone costs no wait on every round (one that comes back is simply there again)."""
        want = self.n if not self._waited else self.min_replies
        self._waited = True
        deadline = self.clock() + self.node_wait
        while True:
            nodes = sorted(int(x) for x in grid.get_node_ids())
            if len(nodes) >= want or self.clock() >= deadline:
                break
            LOG.info("waiting for devices: %d of %d connected", len(nodes), want)
            time.sleep(1.0)
        if len(nodes) > self.n:
            LOG.warning("%d devices connected for %d partitions; replies for partitions not assigned to their "
                        "sender are ignored", len(nodes), self.n)
        if len(nodes) < self.n:
            LOG.warning("%d of %d devices connected; running the round with them", len(nodes), self.n)
        return nodes

    def _messages(self, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                  kind: str) -> list[Message]:
        config["server-round"] = server_round
        config["num-classes"], config["dim"] = self.layer
        every = self.sc.checkpoint.every
        config["run-key"], config["keep-rounds"] = self.run_key, every + 1 if every else 0
        config[common.SERVER_CODE], config[common.SERVER_VERSION] = code_fingerprint(), __version__
        record = RecordDict({common.ARRAYS: arrays, common.CONFIG: config})
        self._grid = grid  # names the device behind a reply the SuperLink sent for it (see collect)
        # TTL = the round's deadline (+ the grace that lets the last pull at the deadline find the
        # replies): a message a device fetches late expires instead of running a stale round
        return [Message(content=record, dst_node_id=nid, message_type=kind, ttl=self.round_timeout + TTL_GRACE_S)
                for nid in self._nodes(grid)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        self._t_round = self.clock()
        # the head sent now is the global head after the previous round: with a record waiting for
        # its client evaluation, the devices score it before they train (see aggregate_train)
        config["eval-received"] = self._pending is not None and self._pending.round == server_round - 2
        return self._messages(grid, server_round, arrays, config, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        t_replies = self.clock()
        round_ = server_round + self.offset - 1
        replies = list(replies)
        if self._pending is not None:  # the previous round's record, completed by these replies' scores
            pending, self._pending = self._pending, None
            out, eval_rejected = self.replies.client_scores(self._grid, replies, "val-num-examples")
            pending.metrics["eval_rejected"] = eval_rejected
            if out is not None:
                pending.metrics.update(client_val_accuracy=round(out["val-accuracy"], 6),
                                       client_val_loss=round(out["val-loss"], 6))
            self._file(pending)  # before this round's aggregation: a due checkpoint is of that round
        t_agg = self.clock()
        rows, losses, received, rejected = self.collect(replies)
        valid = int((~np.isnan(rows).any(axis=1)).sum())
        quorum = valid >= self.min_replies
        if quorum:
            stats = self.server.aggregate(round_, rows)
        else:  # too few updates to trust an aggregate: the global head stays as it was
            stats = {"dropped": self.n - valid, "skipped": 1}
            LOG.warning("round %d: %d valid updates, fewer than min-replies=%d; the global head is unchanged",
                        round_, valid, self.min_replies)
        honest = np.array([losses[pid] for pid in sorted(losses) if self.honest[pid]], dtype=np.float32)
        honest_sum = train_loss_sum([honest])
        counts = {"dropped": int(stats["dropped"]), "skipped": int(stats["skipped"])}
        # the simulation's record of the round (one group: all honest devices' losses, in peer order)
        self._rec = round_metrics(self.sc, self.prep, round_, [honest], [counts])
        self._rec |= {"received": received, "rejected": rejected, "quorum": quorum}
        self._t_aggregated = self.clock()
        self._phases = {"train": t_replies - self._t_round, "aggregate": self._t_aggregated - t_agg}
        metrics = MetricRecord({
            "train-loss": float(honest_sum / max(int(self.honest.sum()), 1)),
            "received": received,
            "rejected": len(rejected),
            **counts,
        })
        return ArrayRecord({common.HEAD: Array(self.server.get_global().copy())}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        if not self.client_eval or not is_eval_round(self.sc, server_round - 1):
            return []
        if self.eval_piggyback and server_round < self.sc.rounds:  # scored in the next round's train message
            return []
        return self._messages(grid, server_round, arrays, config, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Mean of the devices' validation accuracy/loss, weighted by the *server's* count of each
        partition's validation samples (a device's own ``num-examples`` is never trusted: one
        claiming 1e9 examples would otherwise decide the mean). Implausible replies are skipped
        and listed in the round's ``eval_rejected``: no valid partition id, a second reply for a
        partition, a partition not assigned to the sender, accuracy outside [0, 1], a negative or
        non-finite loss (:meth:`fedsim.flower.replies.ReplyCheck.client_scores`)."""
        out, rejected = self.replies.client_scores(self._grid, replies, "num-examples")
        self._rec["eval_rejected"] = rejected
        if out is None:
            return None
        self._rec |= {
            "client_val_accuracy": round(out["val-accuracy"], 6),
            "client_val_loss": round(out["val-loss"], 6),
        }
        return MetricRecord(out)

    def collect(self, replies: Iterable[Message]) -> tuple[np.ndarray, dict[int, float], int, list[dict[str, Any]]]:
        """Train replies → ``[N, P]`` rows in partition order (:meth:`fedsim.flower.replies.ReplyCheck.collect`)."""
        return self.replies.collect(self._grid, replies)

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Centralized evaluation, as fedsim's federated mode does it (the global head on the test
        set), on the same rounds; also files the round's record."""
        if server_round == 0:
            return None
        round_ = server_round + self.offset - 1
        aggregated = self._rec.get("round") == round_
        rec = dict(self._rec) if aggregated else {"round": round_, "group": "honest"}
        phases = self._phases if aggregated else {"train": 0.0, "aggregate": 0.0}
        # the evaluate phase: from the aggregation on (the devices' evaluate round trip, when one was
        # sent, and the global head on the test set); 0.0 on rounds without evaluation
        t_eval = self._t_aggregated if aggregated else self.clock()
        out = None
        evaluated = is_eval_round(self.sc, round_)
        if evaluated:
            head = common.as_head(arrays[common.HEAD].numpy())
            a, lo = global_head_scores(self.sc, self.prep.features, head)
            rec |= accuracy_fields(self.sc, a, lo, np.asarray([-1]))
            out = MetricRecord({"accuracy": float(a[0]), "test-loss": float(lo[0])})
            LOG.info("round %d: global accuracy %.4f, test loss %.4f", round_, a[0], lo[0])
        record = RoundRecord(round_, rec, phases | {"evaluate": self.clock() - t_eval if evaluated else 0.0})
        if self.client_eval and self.eval_piggyback and evaluated and round_ < self.sc.rounds - 1:
            self._pending = record  # filed once the next round's train replies bring the devices' scores
        else:
            self._file(record)
        return out

    def _file(self, record: RoundRecord) -> None:
        """The round's record into the history and, with an output-dir, its files (metrics line,
        timings line, the checkpoint when due: :meth:`fedsim.flower.serverfiles.ServerFiles.append`)."""
        self.history.append(record.metrics)
        saved = self.files is not None and self.files.append(record, self._state, self._checkpoint_extra())
        if saved:
            LOG.info("round %d: checkpoint written to %s", record.round, self.files.dir.checkpoint)
        stops = [s for cb in self.callbacks if (s := cb.on_round(record)) is not None]
        if stops and record.round < self.sc.rounds - 1:  # after the last round the run ends anyway
            if any(s.checkpoint for s in stops) and not saved and self.files is not None:
                self.files.save(record.round, self._state(), self._checkpoint_extra())
                saved = True
            raise Stopped(record.round, stops, saved)

    # ------------------------------------------------------------------ checkpoints, summary
    def _state(self) -> dict[str, Any]:
        return {"server": self.server.get_state()}

    def _bridge_settings(self) -> dict[str, Any]:
        """The run config keys that change the metrics: a resume must keep them."""
        return {"attack-side": self.attack_side, "client-eval": self.client_eval, "min-replies": self.min_replies}

    def _checkpoint_extra(self) -> dict[str, Any]:
        return {"bridge": self._bridge_settings(), "engine": "flower", "run_key": self.run_key}

    def write_checkpoint(self, path: Path, round_: int) -> None:
        """The server's state after ``round_`` (:func:`fedsim.rundir.write_checkpoint`)."""
        assert self.files is not None, "a checkpoint needs an output-dir"
        self.files.save(round_, self._state(), self._checkpoint_extra(), path=path)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def _resume(self) -> None:
        """Continue from ``<output-dir>/checkpoint.pt`` (verified; one-line errors otherwise)."""
        assert self.files is not None
        point = self.files.resume_point(self._bridge_settings())
        assert point.meta is not None and point.state is not None
        srv = point.state.get("server")
        g = srv.get("global") if isinstance(srv, dict) else None
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != (self.num_params,):
            raise CorruptFileError(f"{self.files.dir.checkpoint}: the global head is not a tensor of "
                                   f"{self.num_params} parameters")
        self.server.set_state(srv)
        self.offset = point.start
        self.run_key = str(point.meta.get("run_key") or self.run_key)
        self.history = self.files.reopen(point)  # rounds after the checkpoint run again
        LOG.info("resuming %r after round %d from %s", self.sc.name, point.meta["round"],
                 self.out_dir / rundir.CHECKPOINT if self.out_dir else None)

    def summary_record(self) -> dict[str, Any]:
        """``summary.json``: :func:`fedsim.runfiles.run_summary` (as ``fedsim run`` writes it) and the bridge's keys."""
        out = run_summary(self.sc, self.history, byzantine=int((~self.honest).sum()), f=int(self.server.s.f),
                          num_params=self.num_params, timing={"wall_seconds": round(self.clock() - self._t0, 3)})
        return out | {
            "engine": "flower",
            "rounds_completed": len(self.history),
            "attack_side": self.attack_side,
            "rejected_total": sum(len(x.get("rejected", [])) for x in self.history),
        }
