"""The ServerApp's side of a round trip: push the round's messages, collect the replies by the
round's deadline, and say which device each reply (or missing reply) belongs to.

:class:`PollingGrid` wraps the ``Grid`` Flower hands the ServerApp (``HttpGrid``: the SuperLink's
Runtime API on this machine) and replaces its ``send_and_receive``:

* **Poll interval.** Flower's loop sleeps a fixed 3 s between pulls; this one sleeps
  ``poll-interval`` (the run config; local HTTP, so a short interval costs no network).
* **No pull outlasts the round.** Flower's ``pull_messages`` fetches the replies the SuperLink
  holds and then, one after the other, waits for each reply's objects — up to
  ``PULL_MAX_TIME`` (2 h) per pull, or until the sender's object-push session expires (180 s)
  for a reply whose objects never come (one the SuperLink refused for its size, a device that
  died mid-upload). Its loop looks at the deadline only *between* pulls, so a single such reply
  held the ServerApp inside one pull past the deadline, and the replies that had arrived in the
  meantime were never pulled: the round ended with them missing (CI, an honest device's reply
  lost: "received 0"). Here every pull waits for objects at most until the round's deadline
  (:func:`bounded_object_pulls`), retrying at most every ``PULL_BACKOFF_CAP_S``, and the round
  always ends with one more pull at or after the deadline that waits for nothing: every reply
  complete by then is counted, whatever blocked before it. A reply still incomplete at the
  deadline comes back as Flower's "Reply message objects are unavailable" error. The messages'
  TTL is the deadline plus ``TTL_GRACE_S`` (:class:`~fedsim.flower.server.FedsimStrategy` sets
  it): once a message has expired the SuperLink no longer hands out its reply, so a TTL equal to
  the deadline lost replies that had arrived in time to that last pull.
* **Attribution.** The SuperLink answers for a device that did not: a message to a node that
  stopped sending heartbeats (killed, unplugged) gets an error reply *from the SuperLink*
  (``src_node_id`` = 1, ``SUPERLINK_NODE_ID``), as does a reply whose objects never arrived.
  :meth:`PollingGrid.device` names the node the message was sent to instead.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid

from fedsim.flower import common, compat

PULL_BACKOFF_CAP_S = 1.0  # longest wait between tries for a reply's objects (Flower's own: 10 s)
# A message lives this much longer than the round's deadline (its TTL: round-timeout + this): the
# SuperLink answers a pull for an expired message with "Message Unavailable" even when its reply is
# there, so the last pull, made at the deadline, must still find the messages alive.
TTL_GRACE_S = 10.0


@contextlib.contextmanager
def bounded_object_pulls(max_time: float) -> Iterator[None]:
    """While active, Flower's ``HttpGrid.pull_messages`` waits at most ``max_time`` seconds for the
    objects of the replies it pulls (Flower: 7200 s; it has no parameter for it, so the module's
    ``pull_objects`` is wrapped for the duration); tries are at most ``PULL_BACKOFF_CAP_S`` apart."""
    from flwr.superlink.grid import http_grid

    compat.require("bounded_object_pulls")  # an flwr whose pull_messages no longer calls it: fail, not ignore
    original = http_grid.pull_objects
    http_grid.pull_objects = functools.partial(original, max_time=max(float(max_time), 0.0),
                                               max_tries_per_object=None,  # the time bounds it, not a count
                                               initial_backoff=min(1.0, PULL_BACKOFF_CAP_S),
                                               backoff_cap=PULL_BACKOFF_CAP_S)
    try:
        yield
    finally:
        http_grid.pull_objects = original


class PollingGrid(Grid):
    """``grid`` with the round trip described in the module docstring; everything else is ``grid``'s."""

    def __init__(self, grid: Grid, interval: float) -> None:
        if not interval > 0:
            raise common.BridgeError(f"run config 'poll-interval': {interval} must be positive")
        compat.require("bounded_object_pulls")  # at the ServerApp's start, before any round
        self.grid, self.interval = grid, float(interval)
        self.sent: dict[str, int] = {}  # message id → destination node id (of the last round trip)

    def set_run(self, run_id: int) -> None:  # pragma: no cover - not used by the bridge
        self.grid.set_run(run_id)

    @property
    def run(self) -> Any:  # pragma: no cover - not used by the bridge
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # pragma: no cover - deprecated API
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(self.grid.push_messages(messages))
        for msg, mid in zip(messages, ids, strict=False):
            if mid:
                self.sent[str(mid)] = int(msg.metadata.dst_node_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def device(self, reply: Message) -> int:
        """The node a reply stands for: the destination of the message it answers (the SuperLink
        answers for a node that is gone, as node 1), else its sender."""
        src = int(reply.metadata.src_node_id)
        if src != SUPERLINK_NODE_ID:
            return src
        return self.sent.get(str(reply.metadata.reply_to_message_id), src)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        self.sent = {}  # this round trip's messages only
        ids = {str(i) for i in self.push_messages(messages) if i}
        out: list[Message] = []
        end = None if timeout is None else time.monotonic() + float(timeout)
        while ids:
            left = None if end is None else end - time.monotonic()
            with contextlib.nullcontext() if left is None else bounded_object_pulls(left):
                got = list(self.pull_messages(ids))
            out += got
            ids -= {str(m.metadata.reply_to_message_id) for m in got}
            if not ids or (left is not None and left <= 0):  # that was the pull at the deadline
                break
            time.sleep(self.interval if end is None else min(self.interval, max(end - time.monotonic(), 0.0)))
        return out


def sender(grid: Any, reply: Message) -> int:
    """:meth:`PollingGrid.device` when ``grid`` is one, else the reply's ``src_node_id``."""
    return grid.device(reply) if isinstance(grid, PollingGrid) else int(reply.metadata.src_node_id)
