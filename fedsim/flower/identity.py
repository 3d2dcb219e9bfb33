"""Which authenticated SuperNode may speak for which partition.

A device's ``partition-id`` is its own node config: without a binding, any registered device can
send another partition's update (and the first reply of a round wins). The server therefore ties
each partition to one node id — the id the SuperLink authenticated (with ``--auth``, the id of a
registered public key) — and ignores a reply whose partition is not assigned to its sender.

Two ways to assign, one class:

* a **partition map** (run config ``partition-map``): a JSON file ``{"NODE_ID": PARTITION, ...}``
  written by the operator from the node ids ``fedsim flower register`` prints; nodes not in it are
  refused;
* **first come** (no map): the first valid reply for a partition binds its sender to it for the
  rest of the run; the binding is persisted (``partitions.json`` in the output directory, replaced
  atomically, with the Flower run id) so a restarted ServerApp of the same run keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedsim import rundir
from fedsim._runs import read_json
from fedsim.errors import CorruptFileError
from fedsim.flower.common import BridgeError

STORE_NAME = "partitions.json"


def load_partition_map(path: str | Path, n: int) -> dict[int, int]:
    """``{"NODE_ID": PARTITION}`` from a JSON file → ``{node: partition}``; every partition in
    ``0..n-1`` at most once. A clear one-line error names the file and the entry otherwise."""
    p = Path(path).expanduser()
    try:
        data = read_json(p)
    except OSError as e:
        raise BridgeError(f"run config 'partition-map': cannot read {p}: {e.strerror or e}") from None
    except CorruptFileError as e:  # not UTF-8 or JSON, nested too deeply, too large: names the file
        raise BridgeError(f"run config 'partition-map': {e}") from None
    if not isinstance(data, dict):
        raise BridgeError(f"run config 'partition-map': {p} must hold an object {{\"NODE_ID\": PARTITION}}")
    return _validated(data, n, str(p))


def _validated(data: dict[str, object], n: int, where: str) -> dict[int, int]:
    out: dict[int, int] = {}
    owners: dict[int, int] = {}
    for key, value in data.items():
        if not str(key).isdigit():
            raise BridgeError(f"{where}: node id {key!r} is not a non-negative integer")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise BridgeError(f"{where}: node {key}: partition {value!r} is not an integer in 0..{n - 1}")
        if value in owners:
            raise BridgeError(f"{where}: partition {value} is given to nodes {owners[value]} and {key}")
        out[int(key)] = value
        owners[value] = int(key)
    return out


class PartitionAssignment:
    """Node id ↔ partition id, fixed by a map or bound first-come (see the module docstring)."""

    def __init__(self, n: int, fixed: dict[int, int] | None = None, store: str | Path | None = None,
                 run_id: int = 0) -> None:
        self.n = n
        self.fixed = fixed is not None
        self.by_node: dict[int, int] = dict(fixed or {})
        self.store = Path(store) if store else None
        self.run_id = int(run_id)
        if not self.fixed and self.store is not None and self.store.exists():
            self.by_node = self._load(self.store)
        self.by_partition = {p: node for node, p in self.by_node.items()}

    def _load(self, path: Path) -> dict[int, int]:
        """The bindings saved by this Flower run (a restarted ServerApp); another run's are ignored."""
        try:
            saved = read_json(path)
        except (OSError, CorruptFileError) as e:
            raise BridgeError(f"{path}: unreadable partition assignment ({e})") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("nodes"), dict):
            raise BridgeError(f"{path}: must hold {{\"run-id\": N, \"nodes\": {{\"NODE_ID\": PARTITION}}}}")
        if saved.get("run-id") != self.run_id:
            return {}
        return _validated(saved["nodes"], self.n, str(path))

    def partition_of(self, node: int) -> int | None:
        """The partition bound to ``node`` (None: not in the map, or no valid reply from it yet)."""
        return self.by_node.get(int(node))

    def check(self, node: int, pid: int) -> str:
        """"" if ``node`` may send partition ``pid`` (binding it first-come if both are free);
        otherwise the reason the reply is ignored."""
        node, pid = int(node), int(pid)
        mine = self.by_node.get(node)
        owner = self.by_partition.get(pid)
        if mine == pid:
            return ""
        if mine is not None:
            return f"node {node} is assigned partition {mine}, not {pid}"
        if self.fixed:
            return f"node {node} is not in the partition map"
        if owner is not None:
            return f"partition {pid} is assigned to node {owner}"
        self.by_node[node], self.by_partition[pid] = pid, node
        self._save()
        return ""

    def _save(self) -> None:
        if self.store is None:
            return
        nodes = {str(k): v for k, v in sorted(self.by_node.items())}
        rundir.atomic_write(self.store, (json.dumps({"run-id": self.run_id, "nodes": nodes}, indent=1) + "\n").encode())
