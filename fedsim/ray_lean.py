"""The lean start of a Ray fedsim starts itself (issue 19: ~110-160 MB of the 10,000-peer run's
peak): the ``FEDSIM_RAY_LEAN`` setting (:data:`LEAN_ENV`, :func:`lean_requested`), the Ray system
options (:func:`lean_system_config`), the head processes stopped once Ray runs
(:func:`lean_stopped_daemons`, :func:`stop_daemons`), and the environment variables set only while
that Ray runs (:func:`set_for_this_ray`, :func:`restore_env`); and :class:`RayStartError`.

Helpers of :func:`fedsim.backend.init_ray` and :func:`fedsim.backend.shutdown_ray`, which call them;
this module imports no Ray (it is handed the ``ray`` module), so ``fedsim.backend`` stays the only
module that imports it (``tests/test_architecture.py``).
"""

from __future__ import annotations

import os
from typing import Any

from fedsim.errors import FedsimError

LEAN_ENV = "FEDSIM_RAY_LEAN"
"""``FEDSIM_RAY_LEAN=0`` starts fedsim's own Ray with all of Ray's processes (for ``ray status``,
the state API or job submission); ``1`` or unset: lean (:func:`lean_system_config`,
:func:`lean_stopped_daemons`); any other value is an error."""


def lean_system_config() -> dict[str, Any]:
    """Ray system options of a lean start: the raylet prestarts no idle Python worker (by default
    one per CPU, at start-up and again when the first driver registers; each ~50 MB doing nothing
    until a task or actor takes it, and Ray keeps up to one per CPU: on a 64-CPU machine ~3 GB for a
    run of 2 actors). A worker then starts when an actor or task needs one (~1 s, once per actor)."""
    return {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def lean_stopped_daemons(log_to_driver: bool) -> list[str]:
    """The Ray head processes (``ray._private.ray_constants.PROCESS_TYPE_*``) a lean start stops as
    soon as Ray runs, ~50-60 MB each, none used by fedsim: the autoscaler ``monitor`` (a single
    machine never scales; ``ray status`` needs it), the ``dashboard`` API server (started even with
    ``include_dashboard=False``: the job, state and usage-stats APIs), and the ``log_monitor`` when
    the workers' output is not shown (``log_to_driver=False``: it only forwards that output; the
    logs stay in the session folder). The raylet's own agents (``ray::DashboardAgent``,
    ``ray::RuntimeEnvAgent``) share its fate and stay."""
    return ["monitor", "dashboard", *([] if log_to_driver else ["log_monitor"])]


def lean_requested() -> bool:
    """Whether :data:`LEAN_ENV` asks for a lean start: unset, empty or ``1`` yes, ``0`` no; any other
    value is a one-line :class:`RayStartError` (a ``false`` or ``off`` must not silently mean lean)."""
    value = os.environ.get(LEAN_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise RayStartError(f"{LEAN_ENV}={value!r}: expected 0 (Ray with all its processes) or 1 (lean, the default)")
    return value != "0"


def stop_daemons(ray: Any, kinds: list[str]) -> list[str]:
    """Stop the head processes ``kinds`` of the Ray this process started (SIGKILL: on SIGTERM the
    autoscaler monitor reports itself failed to the driver; Ray forgets them, so its shutdown does
    not look for them). Returns the kinds stopped; a Ray
    without one of them (another version) is left as it is."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None or not hasattr(node, "_kill_process_type"):
        return []
    stopped = []
    for kind in kinds:
        if kind in getattr(node, "all_processes", {}):
            try:
                node._kill_process_type(kind, allow_graceful=False, check_alive=False, wait=True)
                stopped.append(kind)
            except Exception:  # noqa: BLE001 - a Ray that cannot stop it keeps it
                pass
    return stopped


class RayStartError(FedsimError, RuntimeError):
    """Ray could not be started here, or the cluster address given could not be reached."""


_ENV_SET: list[str] = []  # variables init_ray set (they were unset) for the Ray it started


def set_for_this_ray(name: str, value: str) -> None:
    """Set ``name`` unless the user did, remembering it so :func:`fedsim.backend.shutdown_ray` unsets it."""
    if name not in os.environ:
        os.environ[name] = value
        _ENV_SET.append(name)


def restore_env() -> None:
    while _ENV_SET:
        os.environ.pop(_ENV_SET.pop(), None)
