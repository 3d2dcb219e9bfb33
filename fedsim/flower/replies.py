"""The devices' replies as the Flower server trusts them: checked, attributed, or rejected.

:class:`ReplyCheck` turns a round's train replies into the ``[N, P]`` rows the rule aggregates
(:meth:`ReplyCheck.collect`) and evaluation scores into their weighted mean
(:meth:`ReplyCheck.client_scores`). Every rejection is logged and listed with the sender's node
id, its partition and the reason: an error reply, no valid partition id, a partition not
assigned to the sender (:class:`~fedsim.flower.identity.PartitionAssignment`), a second reply
for a partition, a head that is too large, unreadable, non-numeric, of the wrong shape or not
finite (``strategies.sanitize``, the rule's own check), an implausible evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

import strategies
from fedsim.flower import common
from fedsim.flower.common import LOG
from fedsim.flower.grid import sender
from fedsim.flower.identity import PartitionAssignment


def validation_sizes(prep: Any) -> list[int]:
    """Each peer's number of local validation samples, from the set-up the run uses
    (``prepare.prepare``): what a device's reported ``num-examples`` must equal."""
    sizes: dict[int, int] = {}
    for s in prep.setups:
        for j, idx in enumerate(s.val_idx):
            sizes[int(s.first) + j] = len(idx)
    return [sizes.get(i, 0) for i in range(len(prep.byzantine))]


class ReplyCheck:
    """The checks on the replies of ``n`` devices holding heads of ``num_params`` parameters:
    ``assignment`` binds partitions to nodes, ``val_sizes`` (:func:`validation_sizes`) weighs
    their evaluations."""

    def __init__(self, n: int, num_params: int, assignment: PartitionAssignment, val_sizes: list[int],
                 code: str | None = None, allow_mismatch: bool = False) -> None:
        self.n, self.num_params = n, num_params
        # the server's fedsim code (fedsim.codehash; None: replies not checked), and run config
        # allow-version-mismatch (a different or missing device code is logged once, not refused)
        self.code, self.allow_mismatch = code, allow_mismatch
        self._allowed: set[str] = set()
        # a right-shaped head in the widest numeric dtype (8 bytes), plus its .npy header
        self.max_head_bytes = 8 * num_params + 4096
        self.assignment = assignment
        self.val_sizes = val_sizes

    def partition_id(self, metrics: Any) -> int:
        """The reply's ``partition-id`` as a valid peer index (ValueError otherwise)."""
        raw = metrics["partition-id"]
        if isinstance(raw, bool) or not isinstance(raw, int | float) or int(raw) != raw:
            raise ValueError(f"partition-id {raw!r} is not an integer")
        pid = int(raw)
        if not 0 <= pid < self.n:
            raise ValueError(f"partition-id {pid} is not in 0..{self.n - 1}")
        return pid

    def code_reason(self, msg: Message) -> str | None:
        """Why a reply comes from other fedsim code than the server's (its config's ``fedsim-code``,
        :func:`fedsim.flower.client.device_code`), or None. A device that sends none runs a fedsim
        older than this check. ``allow_mismatch``: None, with one warning line per fingerprint."""
        if self.code is None:
            return None
        cfg = msg.content[common.CONFIG] if common.CONFIG in msg.content else {}
        why = common.other_code(cfg, self.code, device=False)
        if why is not None and self.allow_mismatch:
            common.allow_other_code(why, cfg, self._allowed)
            return None
        return why

    @staticmethod
    def error_reason(msg: Message) -> str:
        """An error reply's reason: the device's own ("client error"), or the SuperLink's for a
        device that did not answer (node unavailable, reply expired or its objects never came)."""
        who = "no reply" if int(msg.metadata.src_node_id) == SUPERLINK_NODE_ID else "client error"
        return f"{who}: {msg.error.reason}"

    @staticmethod
    def implausible_eval(pid: int, seen: set[int], acc: float, loss: float) -> str:
        """Why an evaluation reply cannot be true ("" if it can)."""
        if pid in seen:
            return f"a second evaluation for partition {pid} in the same round"
        if not (np.isfinite(acc) and 0.0 <= acc <= 1.0):
            return f"val-accuracy {acc!r} is not in [0, 1]"
        if not (np.isfinite(loss) and loss >= 0.0):
            return f"val-loss {loss!r} is not a finite, non-negative number"
        return ""

    def client_scores(self, grid: Grid | None, replies: Iterable[Message], examples_key: str,
                      ) -> tuple[dict[str, float] | None, list[dict[str, Any]]]:
        """The weighted mean of the devices' scores in ``replies`` (evaluate replies, or train
        replies carrying a piggy-backed evaluation: ``examples_key`` names the sample count there)
        and the rejected replies. Weights are the *server's* count of each partition's validation
        samples (a device's own count is never trusted); ``grid``: the round trip's, which names
        the device behind a reply the SuperLink sent for it."""
        tot = acc = loss = 0.0
        count = 0
        seen: set[int] = set()
        rejected: list[dict[str, Any]] = []
        for msg in replies:
            node = sender(grid, msg)
            try:
                if msg.has_error():
                    raise ValueError(self.error_reason(msg))
                m = msg.content[common.METRICS]
                pid = self.partition_id(m)
                a, lo = float(m["val-accuracy"]), float(m["val-loss"])
                reason = (self.assignment.check(node, pid) or self.code_reason(msg)
                          or self.implausible_eval(pid, seen, a, lo))
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

    def collect(self, grid: Grid | None, replies: Iterable[Message],
                ) -> tuple[np.ndarray, dict[int, float], int, list[dict[str, Any]]]:
        """Train replies → ``(rows, losses, received, rejected)``: ``[N, P]`` rows in partition
        order, each partition's train loss, the replies that were not errors, the rejections. A
        missing or rejected client's row is NaN, which ``strategies.aggregate`` drops (and counts),
        exactly as a malformed simulated message."""
        rows = np.full((self.n, self.num_params), np.nan, dtype=np.float32)
        seen: set[int] = set()
        losses: dict[int, float] = {}
        rejected: list[dict[str, Any]] = []
        received = 0

        def reject(node: Any, pid: int | None, reason: str) -> None:
            rejected.append({"node": int(node) if node is not None else None, "partition": pid, "reason": reason})
            LOG.warning("rejected the update of node %s (partition %s): %s", node, pid, reason)

        for msg in replies:
            node = sender(grid, msg)
            if msg.has_error():
                reject(node, self.assignment.partition_of(node), self.error_reason(msg))
                continue
            received += 1
            pid: int | None = None
            try:
                m = msg.content[common.METRICS]
                pid = self.partition_id(m)
            except Exception as e:  # noqa: BLE001
                reject(node, None, f"no valid partition-id ({e})")
                continue
            why = self.assignment.check(node, pid) or self.code_reason(msg)
            if why:  # impersonation, a node outside the partition map, or other fedsim code
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
