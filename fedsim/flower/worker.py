"""A long-lived ClientApp process for a SuperNode: torch, flwr and fedsim imported once.

Flower 1.41 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process (its
SuperExec polls the node's Runtime API for a task and starts ``flwr-clientapp --token ...``,
which runs that one task and exits), so each message paid the imports (6–7 s on a loaded 2-core
machine) and fedsim's set-up (``runner.prepare``: partition, frozen-backbone features). Flower
also lets a SuperNode leave the tasks to a process started outside it
(``flower-supernode --isolation process``): whatever acquires a task from the node's Runtime API
with ``AcquireTask`` and then runs it with the task's token. This module is such a process. It
does what Flower's SuperExec + ``flwr-clientapp`` pair does for one task (pull the task input,
run the ClientApp, push the reply and the task's final state, heartbeats meanwhile — with
Flower's own functions), but in a loop, in one process, so the modules stay imported and
:mod:`fedsim.flower.client` keeps its peers (``peer_for``'s cache, keyed by run, node, run config
and node config) from one message to the next. What a round depends on still travels in the
message and the node's ``context.state``, so a restarted worker computes the same thing.

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
import sys
import time
from collections.abc import Sequence
from typing import Any

POLL_INTERVAL = 0.1  # seconds between AcquireTask calls while the node has no task (local HTTP)
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


def run_task(address: str, token: str) -> str:
    """Run one task as ``flwr-clientapp --token TOKEN`` would (without exiting); returns its status."""
    from flwr.app import Error, Message
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

    client = runtime_client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        heartbeat.start()
        message, context, run, fab = pull_task_input(client)
        reply = client_app(run, fab)(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
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
    while max_tasks is None or done < max_tasks:
        try:
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        except Exception as ex:  # noqa: BLE001 - the SuperNode is starting or restarting
            _log(10, "AcquireTask failed (%s); retrying", ex)
            time.sleep(1.0)
            continue
        if res.HasField("task") and res.token:
            t0 = time.monotonic()
            status = run_task(address, res.token)
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
    if a.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(a.parent_pid)
    try:
        serve(a.runtime_api_address, a.poll_interval)
    except KeyboardInterrupt:  # the parent monitor's SIGINT, or Ctrl-C
        pass


if __name__ == "__main__":
    main()
