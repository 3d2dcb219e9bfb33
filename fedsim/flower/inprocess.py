"""Run the bridge's ServerApp and ClientApps in one process, no SuperLink or network.

A dry run of exactly the code the SuperLink and SuperNodes execute (the same Messages, Contexts
and node configs), for tests and for ``fedsim flower demo --in-process``. Each simulated node
keeps its ``context.state`` between rounds, as a SuperNode does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

if TYPE_CHECKING:
    from fedsim.callbacks import Callback

SERVER_NODE_ID = 0


class InProcessGrid(Grid):
    """A Flower ``Grid`` whose nodes are ClientApps called in this process."""

    def __init__(self, client_app: Any, node_configs: list[dict[str, Any]], run_config: dict[str, Any],
                 run_id: int = 1) -> None:
        self.client_app = client_app
        self.run_id = run_id
        self.contexts = {
            1000 + i: Context(run_id=run_id, node_id=1000 + i, node_config=dict(nc), state=RecordDict(),
                              run_config=dict(run_config))
            for i, nc in enumerate(node_configs)
        }
        self._ids = itertools.count(1)
        self._replies: dict[str, Message] = {}

    # Grid's abstract API -----------------------------------------------------------
    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used by the bridge
        self.run_id = run_id

    @property
    def run(self) -> Any:  # pragma: no cover - not used by the bridge
        return None

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover - deprecated API
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            mid = f"m{next(self._ids)}"
            msg.metadata.__dict__["_message_id"] = mid
            ctx = self.contexts[msg.metadata.dst_node_id]
            TaskIdentity.node_id = msg.metadata.dst_node_id
            try:
                reply = self.client_app(message=msg, context=ctx)
            except Exception as e:  # noqa: BLE001 - a failing ClientApp becomes an error reply, as in Flower
                from flwr.app import Error

                reply = Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            finally:
                TaskIdentity.node_id = SERVER_NODE_ID
            self._replies[mid] = reply
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in message_ids if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def run_in_process(run_config: dict[str, Any], node_configs: list[dict[str, Any]],
                   callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Run the ServerApp with one in-process ClientApp per node config; returns the summary
    (``callbacks``: :func:`fedsim.flower.server.run_server`'s)."""
    from fedsim.flower.client import make_client_app
    from fedsim.flower.server import run_server

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 1
    try:
        grid = InProcessGrid(make_client_app(), node_configs, run_config)
        ctx = Context(run_id=1, node_id=SERVER_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config))
        return run_server(grid, ctx, callbacks)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
