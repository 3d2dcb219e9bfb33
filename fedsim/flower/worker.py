"""A long-lived ClientApp process for a SuperNode: torch, flwr and fedsim imported once.

Flower 1.41 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process (its
SuperExec polls the node's Runtime API for a task and starts ``flwr-clientapp --token ...``,
which runs that one task and exits), so each message paid the imports (6–7 s on a loaded 2-core
machine) and fedsim's set-up (``prepare.prepare``: partition, frozen-backbone features). Flower
also lets a SuperNode leave the tasks to a process started outside it
(``flower-supernode --isolation process``): whatever acquires a task from the node's Runtime API
with ``AcquireTask`` and then runs it with the task's token. This module is such a process. It
does what Flower's SuperExec + ``flwr-clientapp`` pair does for one task (pull the task input,
run the ClientApp, push the reply and the task's final state, heartbeats meanwhile — with
Flower's own functions), but in a loop, in one process, so the modules stay imported and
:mod:`fedsim.flower.client` keeps its peers (``peer_for``'s cache, keyed by run, node, run config
and node config) from one message to the next. What a round depends on still travels in the
message and the node's ``context.state``, so a restarted worker computes the same thing. One
difference a single process forces: a task whose input never arrives (a leftover message of a run
that stopped, see :func:`pull_task_input`) is given up once the SuperNode has a newer task, instead
of blocking the worker (Flower's per-task process just waits, up to 2 h, beside the others).

``python -m fedsim.flower.launch supernode --warm ...`` (``fedsim flower client --warm``,
:class:`~fedsim.flower.local.LocalFederation`) starts the SuperNode with ``--isolation process``
and this worker beside it (restarted if it dies); ``python -m fedsim.flower.worker
--runtime-api-address 127.0.0.1:9094`` runs it alone. fedsim's ClientApp
(``fedsim.flower.client_app:app``) is loaded once per app bundle; an app whose ClientApp lives in a
module of its own bundle gets that module imported afresh for every message, as a fresh process
would.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fedsim.flower.compat import PULL_TIMEOUT_REASON, FlowerInternalsError, require

POLL_INTERVAL = 0.1  # seconds between AcquireTask calls while the node has no task (local HTTP)
INPUT_WAIT_STEP = 1.0  # seconds between looks for a newer task while a task's input has not arrived
_APPS: dict[str, Any] = {}  # fab hash → loaded ClientApp (fedsim's own only)


def _log(level: int, msg: str, *args: Any, **kw: Any) -> None:
    from flwr.supercore import log

    log(level, "fedsim worker: " + msg, *args, **kw)


def runtime_client(address: str, token: str | None = None) -> Any:
    """A client of the SuperNode's Runtime API (plain HTTP on the node's own loopback port)."""
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp" if token else "SuperExec")]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=make_simple_http_retry_invoker())


def client_app(run: Any, fab: Any) -> Any:
    """The run's ClientApp: fedsim's loaded once per bundle, another module afresh each time."""
    app = _APPS.get(fab.hash_str)
    if app is not None:
        return app
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.config import get_project_config, get_project_dir

    install_from_fab(fab.content, skip_prompt=True)
    ref = str(get_project_config(get_project_dir(run.fab_id, run.fab_version, fab.hash_str))
              ["tool"]["flwr"]["app"]["components"]["clientapp"])
    module = ref.partition(":")[0]
    own = module == "fedsim" or module.startswith("fedsim.")
    if not own:
        sys.modules.pop(module, None)
    app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
        run.fab_id, run.fab_version, fab.hash_str)
    if own:
        _APPS[fab.hash_str] = app
        while len(_APPS) > 8:
            _APPS.pop(next(iter(_APPS)))
    return app


class SupersededError(Exception):
    """The SuperNode has a newer task while this one's input never arrived: the input is gone."""


def pull_task_input(client: Any, newer: Callable[[], bool]) -> tuple[Any, Any, Any, Any]:
    """Flower's ``pull_task_input`` (run_clientapp), except that the wait for the message's objects
    ends when ``newer()`` says the SuperNode has a newer task (:class:`SupersededError`).

    The SuperNode creates a task *before* it pulls the message's objects from the SuperLink, and it
    takes its next message only once it is done with this one: stored (the objects are then here)
    or given up. One way of giving up leaves the task behind — a message of a run that stopped
    (``RunNotRunningException``: after a SuperLink restart, the old run's leftover message), whose
    objects never come. Flower's own ``flwr-clientapp`` for such a task waits up to
    ``PULL_MAX_TIME`` (2 h) in a process of its own; in this single worker it would block every
    later task (seen on loopback: a resumed run never started). So the wait lasts while nothing
    newer exists, checked every ``INPUT_WAIT_STEP`` seconds."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest  # pylint: disable=E0611
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    require("pull_task_input")  # this copy is of flwr FLWR_VERSION's function
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    while True:
        try:
            message = pull_and_inflate_object_from_tree(
                tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
                make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
                return_type=Message, max_time=INPUT_WAIT_STEP, max_tries_per_object=None, initial_backoff=0.05,
                backoff_cap=0.5)
            break
        except ObjectPullError as e:
            if PULL_TIMEOUT_REASON not in str(e):
                raise
            if newer():
                raise SupersededError(f"the SuperNode took a newer message before this task's input arrived "
                                 f"(run {context.run_id}; a message of a run that stopped)") from None
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


def run_task(address: str, token: str, newer: Callable[[], bool] = lambda: False) -> str:
    """Run one task as ``flwr-clientapp --token TOKEN`` would (without exiting); returns its status.
    ``newer``: whether the SuperNode has a newer task (see :func:`pull_task_input`)."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = runtime_client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client, newer)
        reply = client_app(run, fab)(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except SupersededError as ex:
        details = str(ex)
        _log(30, "task abandoned: %s", ex)
    except Exception as ex:  # noqa: BLE001 - a failing app becomes an error reply, as in flwr-clientapp
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        details = str(type(ex)) + ":<'" + str(ex) + "'>"
        if isinstance(ex, LoadClientAppError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            details = "An exception was raised when attempting to load `ClientApp`"
        _log(40, "the ClientApp raised an exception", exc_info=ex)
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
        except Exception as ex:  # noqa: BLE001
            _log(40, "failed to push the reply", exc_info=ex)
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    return str(status)


def serve(address: str, poll: float = POLL_INTERVAL, max_tasks: int | None = None) -> int:
    """Acquire and run the node's ClientApp tasks one after the other (``max_tasks``: then return)."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType

    import fedsim

    _log(20, "pid %d, fedsim from %s, serving the SuperNode at %s", __import__("os").getpid(), fedsim.__file__,
         address)
    client = runtime_client(address)
    done = 0
    queued: list[Any] = []  # tasks acquired while an older task waited for its input

    def acquire() -> Any | None:
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res if res.HasField("task") and res.token else None

    def newer() -> bool:
        try:
            res = acquire()
        except Exception:  # noqa: BLE001 - cannot tell: keep waiting
            return False
        if res is not None:
            queued.append(res)
        return bool(queued)

    while max_tasks is None or done < max_tasks:
        try:
            res = queued.pop(0) if queued else acquire()
        except Exception as ex:  # noqa: BLE001 - the SuperNode is starting or restarting
            _log(10, "AcquireTask failed (%s); retrying", ex)
            time.sleep(1.0)
            continue
        if res is not None:
            t0 = time.monotonic()
            status = run_task(address, res.token, newer)
            done += 1
            _log(20, "task %d (run %d) %s in %.2f s", res.task.task_id, res.task.run_id, status,
                 time.monotonic() - t0)
            continue
        time.sleep(poll)
    client.close()
    return done


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m fedsim.flower.worker", description=__doc__.split("\n")[0])
    p.add_argument("--runtime-api-address", default="127.0.0.1:9094", help="the SuperNode's --host:--port")
    p.add_argument("--poll-interval", type=float, default=POLL_INTERVAL)
    p.add_argument("--parent-pid", type=int, help="exit when this process (the SuperNode) is gone")
    a = p.parse_args(argv)
    try:
        require("pull_task_input")  # before anything starts: one line, not a failing task per message
    except FlowerInternalsError as e:
        sys.exit(f"fedsim worker: {e}")
    if a.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        # Flower's monitor stops this process with SIGINT when the SuperNode is gone; a SIGINT
        # ignored since start-up (a node started with `&` from a script: the shell ignores it for
        # background jobs, and the SuperNode passes that on) would leave the worker running forever,
        # and taking the tasks of the next SuperNode on the same port.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        start_parent_process_monitor(a.parent_pid)
    try:
        serve(a.runtime_api_address, a.poll_interval)
    except KeyboardInterrupt:  # the parent monitor's SIGINT, or Ctrl-C
        pass


if __name__ == "__main__":
    main()
