"""A Flower ServerApp whose strategy is any fedsim aggregation rule.

:class:`FedsimStrategy` is a Flower (message API) ``Strategy`` around fedsim's own federated
server, :class:`fedsim.server.Server`: the same zero initial head, the same rule built by
``strategies.build`` and applied through ``strategies.aggregate`` (which drops non-finite rows),
the same FLTrust root set, and — with ``attack-side = "server"`` — the same simulated Byzantine
clients (``forge_messages``). Every connected device trains every round, as in fedsim's
federated mode; replies are put back in partition-id order before the rule sees them.

A reply whose head is missing, of the wrong shape or dtype, or holds NaN/Inf is rejected and
logged (node id, partition id, reason); the round completes with the others. Metrics stream to
``<output-dir>/metrics.jsonl`` in the format of ``fedsim run`` (plus ``received``/``rejected``).

Persistence: every ``checkpoint.every`` rounds (the scenario's key) the server writes
``<output-dir>/checkpoint.pt`` with :func:`fedsim.rundir.write_checkpoint` (atomic, checksummed,
tensors only, read back with ``weights_only=True``): the server's state (global head, last forged
rows), the round, the scenario fingerprint, the bridge settings that change results, and the count
and sha256 of the ``metrics.jsonl`` lines written by then. Run config ``resume = true`` (``fedsim
flower run --resume``) continues from it after a SuperLink or ServerApp restart: the file is
verified, ``metrics.jsonl`` cut back to the lines it covers, and the rounds after it run as they
would have. The final global head is written to ``final_global.pt`` by the same writer.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

import strategies
from fedlib.heads import num_params
from fedsim import rundir
from fedsim.errors import CorruptFileError, ResumeMismatchError, RunDirExistsError
from fedsim.flower import common
from fedsim.flower.common import LOG
from fedsim.flower.grid import TTL_GRACE_S, PollingGrid, sender
from fedsim.flower.identity import STORE_NAME, PartitionAssignment, load_partition_map
from fedsim.runfiles import (
    TIMINGS,
    Checkpointer,
    MetricsWriter,
    TimingsWriter,
    history_summary,
    read_history,
    write_summary,
)
from fedsim.scenario import Scenario, sampled_clients


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
        self.bias = bool(sc.training.bias)
        self.num_params = num_params(self.layer, self.bias)
        # a right-shaped head in the widest numeric dtype (8 bytes), plus its .npy header
        self.max_head_bytes = 8 * self.num_params + 4096
        setup = prep.server_setup
        if attack_side == "client":  # the devices forge; the server must not forge for them again
            setup = replace(setup, attack=setup.attack.model_copy(update={"name": "none"}))
        self.server = Server(setup, *(prep.root or (None, None)))
        self.attack_side = attack_side
        self.client_eval = client_eval
        self.eval_piggyback = eval_piggyback
        # piggy-backed client evaluation: the record of an evaluated round waits for the next round's
        # train replies, which carry the devices' scores of the global head they received
        self._pending: dict[str, Any] | None = None
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
        self.val_sizes = validation_sizes(prep)
        self.assignment = assignment or PartitionAssignment(self.n)  # first come, kept in memory
        self.out_dir = Path(out_dir) if out_dir else None
        self.history: list[dict[str, Any]] = []
        self._rec: dict[str, Any] = {}
        self._t0 = self._t_round = clock()
        self.offset = 0  # rounds done before this ServerApp started (a resume); Flower counts from 1 again
        # names this run's device states across a resume (a new Flower run): kept in the checkpoint
        self.run_key = secrets.token_hex(8)
        self.metrics: MetricsWriter | None = None  # metrics.jsonl, timings.jsonl, checkpoints: fedsim.runfiles
        self.checkpointer: Checkpointer | None = None
        if self.out_dir is not None:
            self.timings = TimingsWriter(self.out_dir / TIMINGS)
        if resume and self.out_dir is None:
            raise common.BridgeError("run config 'resume': needs an output-dir with a checkpoint")
        if resume:
            self._resume()
        elif self.out_dir is not None:
            refuse_existing_metrics(self.out_dir, overwrite)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "metrics.jsonl").write_text("")
            (self.out_dir / "timings.jsonl").write_text("")
            (self.out_dir / "scenario.yaml").write_text(common.scenario_yaml(sc))
            (self.out_dir / rundir.CHECKPOINT).unlink(missing_ok=True)  # an overwritten run's
            self._open_writers(b"")

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
        config["eval-received"] = self._pending is not None and self._pending["round"] == server_round - 2
        return self._messages(grid, server_round, arrays, config, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None,
                                                                                      MetricRecord | None]:
        round_ = server_round + self.offset - 1
        replies = list(replies)
        if self._pending is not None:  # the previous round's record, completed by these replies' scores
            pending, self._pending = self._pending, None
            out, eval_rejected = self._client_scores(replies, "val-num-examples")
            pending["eval_rejected"] = eval_rejected
            if out is not None:
                pending |= {"client_val_accuracy": round(out["val-accuracy"], 6),
                            "client_val_loss": round(out["val-loss"], 6)}
            self._write_record(pending)  # before this round's aggregation: a due checkpoint is of that round
        rows, losses, received, rejected = self.collect(replies)
        valid = int((~np.isnan(rows).any(axis=1)).sum())
        quorum = valid >= self.min_replies
        if quorum:
            stats = self.server.aggregate(round_, rows)
        else:  # too few updates to trust an aggregate: the global head stays as it was
            stats = {"dropped": self.n - valid, "skipped": 1}
            LOG.warning("round %d: %d valid updates, fewer than min-replies=%d; the global head is unchanged",
                        round_, valid, self.min_replies)
        honest_loss = sum(v for pid, v in losses.items() if self.honest[pid]) / max(int(self.honest.sum()), 1)
        self._rec = {
            "round": round_,
            "group": "honest",
            "train_loss": round(float(honest_loss), 6),
            "dropped": int(stats["dropped"]),
            "skipped": int(stats["skipped"]),
            "bytes_sent_per_peer": int(self.prep.bytes_per_message),
            "bytes_sent_total": int(self.prep.bytes_per_message * self.n),
            "received": received,
            "rejected": rejected,
            "quorum": quorum,
        }
        metrics = MetricRecord({
            "train-loss": float(honest_loss),
            "received": received,
            "rejected": len(rejected),
            "dropped": int(stats["dropped"]),
            "skipped": int(stats["skipped"]),
        })
        return ArrayRecord({common.HEAD: Array(self.server.get_global().copy())}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.offset
        if not self.client_eval or not self._eval_round(server_round - 1):
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
        non-finite loss."""
        out, rejected = self._client_scores(replies, "num-examples")
        self._rec["eval_rejected"] = rejected
        if out is None:
            return None
        self._rec |= {
            "client_val_accuracy": round(out["val-accuracy"], 6),
            "client_val_loss": round(out["val-loss"], 6),
        }
        return MetricRecord(out)

    def _client_scores(self, replies: Iterable[Message], examples_key: str,
                       ) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
        """The weighted mean of the devices' scores in ``replies`` (evaluate replies, or train
        replies carrying a piggy-backed evaluation: ``examples_key`` names the sample count there)
        and the rejected replies (see :meth:`aggregate_evaluate`)."""
        tot = acc = loss = 0.0
        count = 0
        seen: set[int] = set()
        rejected: list[dict[str, Any]] = []
        for msg in replies:
            node = sender(self._grid, msg)
            try:
                if msg.has_error():
                    raise ValueError(self._error_reason(msg))
                m = msg.content[common.METRICS]
                pid = self.partition_id(m)
                a, lo = float(m["val-accuracy"]), float(m["val-loss"])
                reason = self.assignment.check(node, pid) or self._implausible_eval(pid, seen, a, lo)
                if reason:
                    raise ValueError(reason)
            except Exception as e:  # noqa: BLE001 - a device's reply must never stop the server
                rejected.append({"node": int(node), "reason": str(e)})
                LOG.warning("evaluate: ignored the reply of node %s: %s", node, e)
                continue
            seen.add(pid)
            claimed = m[examples_key] if examples_key in m else None
            w = float(self.val_sizes[pid])
            if claimed != self.val_sizes[pid]:
                LOG.warning("evaluate: node %s (partition %d) reports %s=%s; the server's count %d is used",
                            node, pid, examples_key, claimed, self.val_sizes[pid])
            tot, acc, loss, count = tot + w, acc + w * a, loss + w * lo, count + 1
        if not count:
            return None, rejected
        return {"val-accuracy": acc / tot if tot else 0.0, "val-loss": loss / tot if tot else 0.0,
                "devices": count}, rejected

    @staticmethod
    def _error_reason(msg: Message) -> str:
        """An error reply's reason: the device's own ("client error"), or the SuperLink's for a
        device that did not answer (node unavailable, reply expired or its objects never came)."""
        who = "no reply" if int(msg.metadata.src_node_id) == SUPERLINK_NODE_ID else "client error"
        return f"{who}: {msg.error.reason}"

    @staticmethod
    def _implausible_eval(pid: int, seen: set[int], acc: float, loss: float) -> str:
        """Why an evaluation reply cannot be true ("" if it can)."""
        if pid in seen:
            return f"a second evaluation for partition {pid} in the same round"
        if not (np.isfinite(acc) and 0.0 <= acc <= 1.0):
            return f"val-accuracy {acc!r} is not in [0, 1]"
        if not (np.isfinite(loss) and loss >= 0.0):
            return f"val-loss {loss!r} is not a finite, non-negative number"
        return ""

    def partition_id(self, metrics: Any) -> int:
        """The reply's ``partition-id`` as a valid peer index (ValueError otherwise)."""
        raw = metrics["partition-id"]
        if isinstance(raw, bool) or not isinstance(raw, int | float) or int(raw) != raw:
            raise ValueError(f"partition-id {raw!r} is not an integer")
        pid = int(raw)
        if not 0 <= pid < self.n:
            raise ValueError(f"partition-id {pid} is not in 0..{self.n - 1}")
        return pid

    # ------------------------------------------------------------------ fedsim's side
    def collect(self, replies: Iterable[Message]) -> tuple[np.ndarray, dict[int, float], int, list[dict[str, Any]]]:
        """Replies → ``[N, P]`` rows in partition order. A missing or rejected client's row is NaN,
        which ``strategies.aggregate`` drops (and counts), exactly as a malformed simulated message."""
        rows = np.full((self.n, self.num_params), np.nan, dtype=np.float32)
        seen: set[int] = set()
        losses: dict[int, float] = {}
        rejected: list[dict[str, Any]] = []
        received = 0

        def reject(node: Any, pid: int | None, reason: str) -> None:
            rejected.append({"node": int(node) if node is not None else None, "partition": pid, "reason": reason})
            LOG.warning("rejected the update of node %s (partition %s): %s", node, pid, reason)

        for msg in replies:
            node = sender(self._grid, msg)
            if msg.has_error():
                reject(node, self.assignment.partition_of(node), self._error_reason(msg))
                continue
            received += 1
            pid: int | None = None
            try:
                m = msg.content[common.METRICS]
                pid = self.partition_id(m)
            except Exception as e:  # noqa: BLE001
                reject(node, None, f"no valid partition-id ({e})")
                continue
            why = self.assignment.check(node, pid)
            if why:  # impersonation, or a node outside the partition map
                reject(node, pid, why)
                continue
            if pid in seen:
                reject(node, pid, "a second update for this partition in the same round")
                continue
            seen.add(pid)
            try:
                loss = float(m["train-loss"]) if "train-loss" in m else 0.0
                losses[pid] = loss if np.isfinite(loss) else 0.0
            except Exception:  # noqa: BLE001
                losses[pid] = 0.0
            if common.ARRAYS not in msg.content:
                reject(node, pid, "no update (silent)")
                continue
            try:
                head = msg.content[common.ARRAYS][common.HEAD]
                if len(head.data) > self.max_head_bytes:  # checked before numpy() copies it
                    reject(node, pid, f"head of {len(head.data)} bytes, more than {self.max_head_bytes}")
                    continue
                arr = head.numpy()
            except Exception as e:  # noqa: BLE001
                reject(node, pid, f"unreadable head ({type(e).__name__}: {e})")
                continue
            if arr.dtype.kind not in "fiu":
                reject(node, pid, f"dtype {arr.dtype} is not numeric")
                continue
            vec = torch.from_numpy(np.asarray(arr, dtype=np.float32))
            s = strategies.sanitize([vec], self.num_params)
            if s.dropped:
                reject(node, pid, s.reasons[0].replace("sender 0: ", ""))
                continue
            rows[pid] = vec.numpy()
        return rows, losses, received, rejected

    def _eval_round(self, round_: int) -> bool:
        return (round_ + 1) % self.sc.evaluation.every == 0 or round_ == self.sc.rounds - 1

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Centralized evaluation, as fedsim's federated mode does it (the global head on the test
        set), on the same rounds; also writes the round's metrics record."""
        if server_round == 0:
            return None
        round_ = server_round + self.offset - 1
        rec = dict(self._rec) if self._rec.get("round") == round_ else {"round": round_, "group": "honest"}
        out = None
        if self._eval_round(round_):
            from fedsim import heads

            f = self.prep.features
            g = torch.from_numpy(common.as_head(arrays[common.HEAD].numpy()))[None]
            w, b = strategies.unflatten(g, self.layer, self.bias)
            x, y = torch.from_numpy(f.x_test), torch.from_numpy(f.y_test)
            acc, loss = heads.accuracy_and_loss(w.contiguous(), b, x, y)
            a, lo = float(acc[0]), float(loss[0])
            rec |= {
                "accuracy_mean": round(a, 6),
                "accuracy_min": round(a, 6),
                "accuracy_max": round(a, 6),
                "accuracy_std": 0.0,
                "test_loss": round(lo, 6),
                "evaluated_peers": 1,
            }
            out = MetricRecord({"accuracy": a, "test-loss": lo})
            LOG.info("round %d: global accuracy %.4f, test loss %.4f", round_, a, lo)
        if self.out_dir is not None:  # apart, as fedsim run keeps it (now: a piggy-backed record is written later)
            self.timings.append(round_, self.clock() - self._t_round)
        if (self.client_eval and self.eval_piggyback and self._eval_round(round_)
                and round_ < self.sc.rounds - 1):
            self._pending = rec  # written once the next round's train replies bring the devices' scores
        else:
            self._write_record(rec)
        return out

    def _write_record(self, rec: dict[str, Any]) -> None:
        """Append the round's record to ``metrics.jsonl`` (and write the checkpoint when due)."""
        round_ = int(rec["round"])
        self.history.append(rec)
        if self.metrics is not None:
            every = self.sc.checkpoint.every
            due = bool(every) and (round_ + 1) % every == 0 and round_ < self.sc.rounds - 1
            self.metrics.write(rec)
            if due:  # the metrics on disk before the checkpoint that counts them
                self.metrics.sync()
            if due:
                self.write_checkpoint(self.out_dir / rundir.CHECKPOINT, round_)
                LOG.info("round %d: checkpoint written to %s", round_, self.out_dir / rundir.CHECKPOINT)

    # ------------------------------------------------------------------ checkpoints
    def _open_writers(self, existing: bytes) -> None:
        """metrics.jsonl (holding ``existing``, a resume's lines) and the checkpointer counting them."""
        assert self.out_dir is not None
        self.metrics = MetricsWriter(self.out_dir / rundir.METRICS, existing).__enter__()
        fp = rundir.scenario_fingerprint(self.sc.model_dump(mode="json"))
        self.checkpointer = Checkpointer(self.out_dir / rundir.CHECKPOINT, fp, self.metrics)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.__exit__(None, None, None)

    def _bridge_settings(self) -> dict[str, Any]:
        """The run config keys that change the metrics: a resume must keep them."""
        return {"attack-side": self.attack_side, "client-eval": self.client_eval, "min-replies": self.min_replies}

    def write_checkpoint(self, path: Path, round_: int) -> None:
        """The server's state after ``round_`` (:func:`fedsim.rundir.write_checkpoint`)."""
        assert self.checkpointer is not None, "a checkpoint needs an output-dir"
        extra = {"bridge": self._bridge_settings(), "engine": "flower", "run_key": self.run_key}
        self.checkpointer.save(round_, {"server": self.server.get_state()}, extra, path=path)

    def _resume(self) -> None:
        """Continue from ``<output-dir>/checkpoint.pt`` (verified; one-line errors otherwise)."""
        assert self.out_dir is not None
        meta, state, prefix = verified_checkpoint(self.out_dir, self.sc, self._bridge_settings())
        srv = state.get("server")
        g = srv.get("global") if isinstance(srv, dict) else None
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != (self.num_params,):
            raise CorruptFileError(f"{self.out_dir / rundir.CHECKPOINT}: the global head is not a tensor of "
                                   f"{self.num_params} parameters")
        self.server.set_state(srv)
        self.offset = int(meta["round"]) + 1
        self.run_key = str(meta.get("run_key") or self.run_key)
        rundir.atomic_write(self.out_dir / rundir.METRICS, prefix)  # rounds after the checkpoint run again
        self.timings.trim(self.offset)
        self._open_writers(prefix)
        self.history = read_history(self.out_dir / rundir.METRICS)
        LOG.info("resuming %r after round %d from %s", self.sc.name, meta["round"], self.out_dir / rundir.CHECKPOINT)

    def summary_record(self) -> dict[str, Any]:
        final = history_summary(self.history)  # as fedsim run computes them
        return {
            "name": self.sc.name,
            "engine": "flower",
            "rounds": self.sc.rounds,
            "rounds_completed": len(self.history),
            "mode": self.sc.mode,
            "strategy": self.sc.strategy.name,
            "attack": self.sc.peers.attack.name,
            "attack_side": self.attack_side,
            "peers": self.n,
            "byzantine": int((~self.honest).sum()),
            "final_accuracy_mean": final["final_accuracy_mean"],
            "final_accuracy_min": final["final_accuracy_min"],
            "final_accuracy_max": final["final_accuracy_max"],
            "rejected_total": sum(len(x.get("rejected", [])) for x in self.history),
            "bytes_sent_total": final["bytes_sent_total"],
            "wall_seconds": round(self.clock() - self._t0, 3),
            "f": int(self.server.s.f),
            "num_params": self.num_params,
        }


def verified_checkpoint(out: Path, sc: Scenario, bridge: dict[str, Any] | None = None,
                        ) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """``(meta, tensors, metrics prefix)`` of ``out/checkpoint.pt`` when this run may resume from
    it: the same scenario (up to ``name``, ``output``, ``engine``, ``checkpoint``) and bridge
    settings, a ``metrics.jsonl`` that starts with the lines the checkpoint counted, and no
    ``summary.json`` (a finished run). ``bridge=None``: checked later, by the strategy."""
    ckpt, metrics = out / rundir.CHECKPOINT, out / rundir.METRICS
    if (out / "summary.json").exists():
        raise rundir.RunCompleteError(f"{out} holds a finished run (summary.json); nothing to resume")
    if not ckpt.exists():
        raise ResumeMismatchError(f"{ckpt} does not exist: nothing to resume (checkpoints are written every "
                                  "checkpoint.every rounds: --set checkpoint.every=K)")
    meta, state = rundir.read_checkpoint(ckpt)
    fp = rundir.scenario_fingerprint(sc.model_dump(mode="json"))
    if meta["scenario_sha256"] != rundir.fingerprint_sha256(fp) or meta["scenario"] != fp:
        raise ResumeMismatchError(f"{ckpt} was saved for another scenario: "
                                  f"{rundir.first_difference(meta['scenario'], fp)}")
    if bridge is not None and meta.get("bridge") != bridge:
        raise ResumeMismatchError(f"{ckpt} was saved with run config {meta.get('bridge')}, not {bridge}")
    r, n = meta["round"], meta["metrics_lines"]
    if not (isinstance(r, int) and isinstance(n, int) and 0 <= r < sc.rounds - 1 and n == r + 1):
        raise CorruptFileError(f"{ckpt}: round {r!r} with {n!r} metrics lines does not fit {sc.rounds} rounds")
    lines = metrics.read_bytes().splitlines(keepends=True) if metrics.exists() else []
    prefix = b"".join(lines[:n])
    if len(lines) < n or hashlib.sha256(prefix).hexdigest() != meta["metrics_sha256"]:
        raise ResumeMismatchError(f"the first {n} lines of {metrics} are not those the checkpoint recorded "
                                  "(truncated, edited or replaced)")
    return meta, state, prefix


def refuse_existing_metrics(out_dir: Path, overwrite: bool) -> None:
    """A run's metrics are never truncated by accident: an output directory whose ``metrics.jsonl``
    holds records is refused unless the run config says ``overwrite = true``."""
    metrics = out_dir / "metrics.jsonl"
    if not overwrite and metrics.is_file() and metrics.stat().st_size > 0:
        raise RunDirExistsError(
            f"{metrics} holds an earlier run's metrics; choose another output-dir, or pass "
            "--run-config overwrite=true to replace them"
        )


FINAL_GLOBAL = "final_global.pt"


def validation_sizes(prep: Any) -> list[int]:
    """Each peer's number of local validation samples, from the set-up the run uses
    (``runner.prepare``): what a device's reported ``num-examples`` must equal."""
    sizes: dict[int, int] = {}
    for s in prep.setups:
        for j, idx in enumerate(s.val_idx):
            sizes[int(s.first) + j] = len(idx)
    return [sizes.get(i, 0) for i in range(len(prep.byzantine))]


def partition_assignment(sc: Scenario, run_config: dict[str, Any], out: Path, run_id: int = 0) -> PartitionAssignment:
    """The run's node ↔ partition binding: the ``partition-map`` file, or first come, persisted
    in ``out/partitions.json``."""
    path = str(common.run_config_value(run_config, "partition-map") or "")
    if path:
        return PartitionAssignment(sc.peers.count, fixed=load_partition_map(path, sc.peers.count))
    out.mkdir(parents=True, exist_ok=True)
    return PartitionAssignment(sc.peers.count, store=out / STORE_NAME, run_id=run_id)


def output_dir(sc: Scenario, run_config: dict[str, Any]) -> Path:
    d = str(common.run_config_value(run_config, "output-dir") or "")
    return Path(d).expanduser() if d else Path(sc.output.dir) / f"{sc.name}-flower"


def run_server(grid: Grid, context: Context) -> dict[str, Any]:
    """The ServerApp's main: the scenario from the run config, fedsim's set-up, the rounds."""
    from fedsim.runner import prepare

    rc = dict(context.run_config)
    sc = common.scenario_from_run_config(rc)
    out = output_dir(sc, rc)
    resume = bool(common.run_config_value(rc, "resume"))
    if resume:
        verified_checkpoint(out, sc)  # before any work
    else:
        refuse_existing_metrics(out, bool(common.run_config_value(rc, "overwrite")))  # before any work
    grid = PollingGrid(grid, float(common.run_config_value(rc, "poll-interval")))
    prep = prepare(sc, log=lambda m: LOG.info("%s", m))
    strategy = FedsimStrategy(
        sc,
        prep,
        attack_side=str(common.run_config_value(rc, "attack-side")),
        client_eval=bool(common.run_config_value(rc, "client-eval")),
        eval_piggyback=bool(common.run_config_value(rc, "eval-piggyback")),
        node_wait=float(common.run_config_value(rc, "node-wait")),
        out_dir=out,
        assignment=partition_assignment(sc, rc, out, int(context.run_id)),
        overwrite=bool(common.run_config_value(rc, "overwrite")),
        round_timeout=float(common.run_config_value(rc, "round-timeout")),
        min_replies=int(common.run_config_value(rc, "min-replies")),
        resume=resume,
    )
    strategy.start(
        grid=grid,
        initial_arrays=strategy.initial_arrays(),
        num_rounds=sc.rounds - strategy.offset,
        timeout=float(common.run_config_value(rc, "round-timeout")),
        train_config=ConfigRecord(),
        evaluate_config=ConfigRecord(),
        evaluate_fn=strategy.evaluate_global,
    )
    strategy.write_checkpoint(out / FINAL_GLOBAL, sc.rounds - 1)  # the final global head, same safe format
    strategy.close()
    summary = strategy.summary_record()
    write_summary(out / rundir.SUMMARY, summary)
    (out / "versions.json").write_text(json.dumps(_versions(), indent=2) + "\n")
    LOG.info("fedsim run %r finished: final accuracy %s; metrics in %s", sc.name, summary["final_accuracy_mean"], out)
    return summary


def _versions() -> dict[str, str]:
    import platform

    import flwr

    from fedsim.version import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "flwr": flwr.__version__,
        "fedsim": __version__,
    }


def make_server_app() -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, context)

    return app
