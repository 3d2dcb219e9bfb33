"""Where peer groups run: Ray actors (default; local or a cluster via ``engine.address``) or
in-process objects with the same call pattern (``engine.backend: local``: one after another, or
side by side in a pool of threads, ``engine.local_parallel``).

Every Ray fedsim starts on this machine (``fedsim run``, ``fedsim sweep``, the probes' retraining
runs) is started by :func:`init_ray`, which makes it private to this user: bound to 127.0.0.1,
its session under a 0700 folder, and token authentication on where the process has not imported
Ray yet; and lean (:mod:`fedsim.ray_lean`): no prestarted idle workers and none of the daemons fedsim does
not use (issue 19: ~110-160 MB of the 10,000-peer run's peak); and watched by a reaper
(:mod:`fedsim.ray_reaper`) that kills what is left of it when the driver dies without stopping it
(``kill -KILL``: Ray's agents would otherwise outlive it by a minute). A cluster address is the
user's explicit choice and is connected to as given, with none of these options.

This is the only fedsim module that imports Ray (``tests/test_architecture.py``): the others use
its verbs: :func:`make_backend` (a run's actors), :func:`run_tasks` (a sweep's runs in parallel),
:func:`kill_actors` (free a run's CPUs) and :func:`ray_version`. Every actor and task it starts
runs with the driver's oneMKL branch (:func:`worker_options`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import stat
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from fedsim import mkl_branch, ray_address, ray_leftovers, ray_reaper
from fedsim.errors import FedsimError
from fedsim.ray_lean import (
    RayStartError,
    lean_requested,
    lean_stopped_daemons,
    lean_system_config,
    restore_env,
    set_for_this_ray,
    stop_daemons,
)
from fedsim.threads import check_count, task_threads, torch_threads

LOOPBACK = "127.0.0.1"


def private_ray_dir(base: str | None = None) -> Path:
    """``<base>/fedsim-ray-<uid>``: a 0700 folder owned by this user, the parent of Ray's temp dir.

    Ray makes its own temp, session, socket and log folders mode 0777; under a 0700 parent no
    other user can reach them. ``base`` defaults to the temp folder, kept short: Ray's socket
    paths must fit ``sun_path`` (107 bytes), so a long ``TMPDIR`` (macOS) falls back to ``/tmp``.
    Refuses a folder (or link) of that name that this user does not own."""
    if base is None:
        base = tempfile.gettempdir()
        if len(base) > 40 and os.path.isdir("/tmp"):
            base = "/tmp"
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    d = Path(base) / f"fedsim-ray-{uid}"
    try:
        d.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise RayStartError(f"cannot create Ray's private folder {d}: {e.strerror or e}") from None
    st = d.lstat()
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise RayStartError(f"{d} is not a folder owned by you; remove it (or set TMPDIR elsewhere) and try again")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(d, 0o700)
    return d


def _enable_token_auth() -> bool:
    """Turn on Ray's token authentication (``RAY_AUTH_MODE=token`` and a random
    ``RAY_AUTH_TOKEN``, inherited by the processes Ray starts) if Ray is not imported yet: Ray
    reads the mode once, at import, and a driver and cluster that disagree cannot talk. An
    ``RAY_AUTH_MODE`` already set is the user's choice and is kept. Returns whether token
    authentication is on for this process."""
    if "ray" not in sys.modules and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode

        return get_authentication_mode() == AuthenticationMode.TOKEN
    except ImportError:  # a Ray without token authentication
        return False


@contextlib.contextmanager
def _loopback_node() -> Iterator[None]:
    """While Ray starts, make it take 127.0.0.1 as this node's address: Ray maps an explicit
    ``_node_ip_address="127.0.0.1"`` to the machine's routable address unless its single-machine
    mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at import) is on; with a loopback node
    address its gRPC servers (GCS, raylet, object manager, workers) listen on loopback only."""
    from ray._private import ray_constants

    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    ray_constants.ENABLE_RAY_CLUSTER = False
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


@contextlib.contextmanager
def _ctrl_c_kept() -> Iterator[None]:
    """While Ray starts, a Ctrl-C is not lost. Ray forks its daemons, and a SIGINT that arrives
    during a fork raises KeyboardInterrupt in the ``logging`` module's after-fork hook, where
    Python prints "Exception ignored" and carries on (seen: a run Ctrl-C'd while Ray started ran to
    its end). In the main thread, where Python's own handler is on, a handler that also notes the
    Ctrl-C takes its place; a Ctrl-C noted but not raised is raised when the start returns."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if seen:
        raise KeyboardInterrupt


def _gcs_probe(address: str, timeout_s: float) -> None:
    """Raise unless a Ray GCS at ``address`` answers within about ``timeout_s`` seconds (plus the
    client's own 5 s connect wait): Ray's standalone GCS client, which asks for the cluster's id."""
    from ray._raylet import InnerGcsClient

    InnerGcsClient.standalone(address, None, max(1, int(timeout_s * 1000)))


def cluster_address(address: str) -> str:
    """The address :func:`init_ray` connects to for ``address`` (``auto``, ``HOST:PORT``,
    ``ray://HOST:PORT``) as Ray resolves it, checked live within seconds
    (:func:`fedsim.ray_address.live_address`); a one-line :class:`RayStartError` otherwise. A run
    calls it before it writes its folder (:meth:`fedsim.runner.Run.create_dir`), ``init_ray`` before
    it connects."""
    from ray._private import services
    from ray._private.utils import get_ray_address_file  # the file Ray's read_ray_address reads

    try:
        from ray._raylet import InnerGcsClient

        probe = _gcs_probe if hasattr(InnerGcsClient, "standalone") else None
    except ImportError:  # a Ray without the standalone GCS client: the TCP check only
        probe = None
    return ray_address.live_address(
        address, services.canonicalize_bootstrap_address, Path(get_ray_address_file(None)), probe
    )


def _gcs_address(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001 - Ray Client sessions have no GCS address here
        return "a Ray session"


def _same_cluster(ray: Any, address: str) -> bool:
    """Whether the Ray this process already runs is the cluster at ``address`` (as
    :func:`cluster_address` resolved it; a ``ray://`` address is taken as the user's own)."""
    if "://" in address:
        return True
    return _gcs_address(ray) == address


def shutdown_ray(ray: Any) -> None:
    """Stop the Ray :func:`init_ray` started, end its reaper (:mod:`fedsim.ray_reaper`: after a
    clean stop it touches nothing) and unset what it set in the environment for it
    (``RAY_USAGE_STATS_ENABLED``). Token authentication's variables stay: Ray read them at import,
    and a later start in this process must agree with them."""
    try:
        ray.shutdown()
        ray_reaper.stop(clean=True)
    finally:
        restore_env()


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = False) -> bool:
    """Start Ray for this process, or connect to the cluster at ``address``; the one place fedsim
    calls ``ray.init``. Returns False (and does nothing) when Ray is already initialised here,
    e.g. by a caller that runs several scenarios on one Ray; True when this call started or
    connected it (the caller then shuts it down).

    Without ``address``, a new Ray private to this user is started (``address="local"``: never
    attached to a cluster named by ``RAY_ADDRESS`` or left by ``ray start``): bound to
    127.0.0.1, its temp dir under :func:`private_ray_dir`, token authentication on where
    :func:`_enable_token_auth` can turn it on, no dashboard, and unless ``FEDSIM_RAY_LEAN=0``
    (:data:`fedsim.ray_lean.LEAN_ENV`) lean: no prestarted workers (:func:`lean_system_config`), no usage-stats
    reporting (``RAY_USAGE_STATS_ENABLED=0`` unless set, only while the Ray it starts runs:
    :func:`shutdown_ray` unsets it again), and the daemons of :func:`lean_stopped_daemons` stopped
    once Ray runs. It starts the Ray's reaper (:func:`fedsim.ray_reaper.start`) first, so a driver
    killed even during Ray's start leaves none of that Ray's processes behind.

    With ``address``, the cluster is first resolved as Ray would and checked live
    (:func:`cluster_address`: a one-line error within seconds, not Ray's minutes of retries) and Ray
    connects to the address so found. Before it starts or joins a Ray, it warns of this user's Ray
    processes whose session's GCS and raylet are gone from this machine
    (:func:`fedsim.ray_leftovers.leftovers`); it does not stop them."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU simulation: silence Ray's GPU tip
    local = not address
    lean = lean_requested() and local  # a junk value is an error even where it has no effect
    if local:
        _enable_token_auth()
    import ray

    if not local:
        address = cluster_address(address)  # before all else: no live cluster there is an error even if Ray runs here
    if ray.is_initialized():
        if not local and not _same_cluster(ray, address):
            raise RayStartError(
                f"Ray is already running in this process ({_gcs_address(ray)}); it cannot also connect to {address}"
            )
        return False
    stale = ray_leftovers.leftovers()  # bounded: SCAN_TIMEOUT_S per scan
    if stale:
        warnings.warn(stale, RuntimeWarning, stacklevel=2)
    kw: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": log_to_driver,
        "logging_level": "ERROR",
        "configure_logging": True,
    }
    try:
        if not local:
            for attempt in (1, 2):
                try:
                    ray.init(address=address, **kw)
                    return True
                except ConnectionAbortedError:  # Ray client: "Initialization failure from server"
                    # the cluster's client server starts a process per client; on a loaded machine that
                    # start can fail once (seen in CI's two-node test): one retry, then the error
                    if attempt == 2 or not address.startswith("ray://"):
                        raise
                    import time

                    time.sleep(2.0)
        kw |= {"address": "local", "num_cpus": num_cpus, "_node_ip_address": LOOPBACK}
        kw["_temp_dir"] = str(private_ray_dir() / "ray")
        if lean:
            kw["_system_config"] = lean_system_config()
            set_for_this_ray("RAY_USAGE_STATS_ENABLED", "0")  # read by ray.init and the processes it starts
        ray_reaper.start(kw["_temp_dir"])  # before ray.init: a kill during the start is covered too
        with _loopback_node(), _ctrl_c_kept():
            ray.init(**kw)
        node = getattr(ray._private.worker, "_global_node", None)
        if node is not None:
            ray_reaper.watch(node.get_session_dir_path())
        if lean:
            stop_daemons(ray, lean_stopped_daemons(log_to_driver))
    except FedsimError:
        ray_reaper.stop(clean=False)  # kills what a failed start left
        restore_env()
        raise
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, ValueError, RuntimeError, ...
        ray_reaper.stop(clean=False)
        restore_env()
        where = f"connect to the Ray cluster at {address}" if address else "start Ray on this machine"
        first = (str(e).strip().splitlines() or [""])[0]
        raise RayStartError(f"could not {where}: {type(e).__name__}: {first}") from None
    if node is not None and node.node_ip_address != LOOPBACK:
        warnings.warn(f"Ray took node address {node.node_ip_address}, not {LOOPBACK}", RuntimeWarning, stacklevel=2)
    return True


def ray_version() -> str | None:
    """The installed Ray's version; None where Ray is not installed. Read from the package's metadata
    unless Ray is imported already: an in-process run (``engine.backend: local``) imports no Ray."""
    if "ray" in sys.modules:
        return str(sys.modules["ray"].__version__)
    from importlib import metadata

    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


def kill_actors(handles: list[Any]) -> None:
    """Free the Ray actors' CPUs now (a shared Ray session may run more after them); actors
    already dead are skipped."""
    if not handles:
        return
    import ray

    for h in handles:
        try:
            ray.kill(h)
        except Exception:  # noqa: BLE001 - already dead
            pass


def run_tasks(
    fn: Callable[..., Any],
    calls: list[tuple[Any, tuple[Any, ...]]],
    done: Callable[[Any, Any, BaseException | None], None],
    jobs: int | None = None,
    address: str | None = None,
    started: Callable[[Any], None] | None = None,
    threads_kw: str | None = None,
    threads: int | None = None,
) -> None:
    """Run ``fn(*args)`` for every ``(key, args)`` of ``calls`` as Ray tasks, in order, at most
    ``jobs`` at a time (default and cap: the cluster's CPUs); never retried.

    Each task asks Ray for one CPU, or with ``threads_kw`` for its share of the cluster's CPUs,
    ``T = CPUs // tasks at once`` (at least 1, at most one node's CPUs:
    :func:`fedsim.threads.task_threads`), and is called as ``fn(*args, **{threads_kw: T})``: the
    threads it may use, so the tasks in flight never ask for more threads than there are CPUs;
    ``threads`` sets ``T`` instead (then at most ``CPUs // T`` tasks run at once).

    ``started(key)`` is called as a task is submitted and ``done(key, result, error)`` as each
    finishes, in completion order (``error``: the exception of a task that failed, e.g. a worker
    killed or out of memory, with ``result`` None). Starts Ray (:func:`init_ray`; locally with
    ``max(jobs, cpu_count)`` CPUs) unless it runs in this process already, and shuts down what it
    started; tasks still in flight when it leaves (an exception, Ctrl-C) are cancelled."""
    started_ray = init_ray(address, None if address else max(jobs or 0, os.cpu_count() or 1))
    import ray

    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        limit = max(1, min(jobs or cpus, cpus))
        per_task, kw = 1, {}
        if threads_kw is not None:
            node = _largest_node_cpus(ray, cpus)
            if threads is not None and threads > node:  # Ray would wait forever for such a task
                raise ValueError(f"threads: {threads} is more than the {node} CPUs of the largest Ray node")
            per_task = threads or min(task_threads(cpus, limit), node)
            kw = {threads_kw: per_task}
        task = ray.remote(num_cpus=per_task, max_retries=0, **worker_options())(fn)
        queue, in_flight = list(calls), {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    key, args = queue.pop(0)
                    if started is not None:
                        started(key)
                    in_flight[task.remote(*args, **kw)] = key
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    key = in_flight.pop(ref)
                    try:
                        res, err = ray.get(ref), None
                    except Exception as e:  # noqa: BLE001 - a worker crash (OOM, killed) fails one task
                        res, err = None, e
                    done(key, res, err)
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)
    finally:
        if started_ray:
            shutdown_ray(ray)


def worker_options() -> dict[str, Any]:
    """Ray's options for every actor and task fedsim starts: ``runtime_env`` with the driver's
    ``MKL_CBWR`` (:func:`fedsim.mkl_branch.worker_env`), so a worker on a cluster started apart
    (``ray start``: its workers have that node's environment) runs the driver's oneMKL branch;
    Ray merges these ``env_vars`` into a job's own ``runtime_env``. No options where it is unset."""
    env = mkl_branch.worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def _largest_node_cpus(ray: Any, default: int) -> int:
    """The most CPUs one alive node of the cluster has (a task cannot span nodes); ``default``
    where Ray does not say."""
    try:
        cpus = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - a Ray Client session may not list nodes
        return default
    return max([c for c in cpus if c > 0], default=default)


class _LocalRef:
    """The pending result of a call :class:`LocalBackend` runs in its threads (item ``index`` of a
    call with ``num_returns > 1``); :meth:`LocalBackend.get` waits for it."""

    def __init__(self, future: Future, index: int | None = None) -> None:
        self._future, self._index = future, index

    def result(self) -> Any:
        out = self._future.result()  # (a call's exception is raised here, in the driver)
        return out if self._index is None else out[self._index]


def _resolved(value: Any) -> Any:
    """``value``, or the result it stands for where it is a :class:`_LocalRef`: as on Ray, a call's
    top-level arguments that are pending results are the results themselves by the time it runs."""
    return value.result() if isinstance(value, _LocalRef) else value


def _then_mark(done: Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``fn(*args, **kwargs)``, and ``done`` marked finished as it returns or raises."""
    try:
        return fn(*args, **kwargs)
    finally:
        done.set_result(None)


class _LocalCall:
    def __init__(self, fn, handle: _LocalHandle, num_returns: int = 1) -> None:
        self._fn, self._handle, self._num_returns = fn, handle, num_returns

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        h = self._handle
        # the arguments are resolved here, in the driver (no pool thread ever waits for another call),
        # and an actor's calls run in the order they were made, one at a time, as a Ray actor's do
        args = tuple(_resolved(a) for a in args)
        kwargs = {k: _resolved(v) for k, v in kwargs.items()}
        if h._last is not None:
            wait([h._last])  # (its error, if any, is raised where its result is asked for)
        if h._pool is None:  # one after another: the call runs now
            return self._fn(*args, **kwargs)
        if h._alone or getattr(self._fn, "runs_alone", False):  # now, in this thread, on the run's threads
            with torch_threads(h._alone_threads):
                return self._fn(*args, **kwargs)
        # the actor's order is kept by a marker set as the call ends, not by the call's future: that
        # would hold the call's result (a group's state copy, its message) until the actor's next call
        done = Future()
        future = h._pool.submit(_then_mark, done, self._fn, args, kwargs)
        h._last = done  # (only once submitted: a refused submit leaves no marker the next call waits on forever)
        name = getattr(self._fn, "__name__", "")
        if name not in h._warm:
            # the driver waits for a method's first call before it makes another: a choice a library
            # makes at first use is not raced (oneMKL's vector-math kernels were: fedsim.mkl_vml)
            wait([done])
            h._warm.add(name)
        if self._num_returns == 1:
            return _LocalRef(future)
        return tuple(_LocalRef(future, i) for i in range(self._num_returns))

    def options(self, num_returns: int = 1, **_: Any) -> _LocalCall:
        return _LocalCall(self._fn, self._handle, num_returns)


class _LocalHandle:
    def __init__(self, obj: Any, pool: ThreadPoolExecutor | None, alone_threads: int = 1,
                 warm: set[str] | None = None) -> None:
        self._obj, self._pool, self._alone_threads = obj, pool, alone_threads
        self._warm = set() if warm is None else warm  # the backend's: methods whose first pool call has ended
        self._alone = bool(getattr(type(obj), "runs_alone", False))  # every call of this actor runs alone
        self._last: Future | None = None  # set when this actor's last call in the pool has ended

    def __getattr__(self, name: str) -> _LocalCall:
        return _LocalCall(getattr(self._obj, name), self)


class LocalBackend:
    """Peer groups in this process (``engine.backend: local``). ``workers`` 1: every call runs when
    it is made, one group after another. ``workers`` > 1 (:func:`fedsim.threads.local_workers`,
    ``engine.local_parallel``): the calls run in a pool of that many threads, so the groups' calls
    of one phase run side by side, as Ray's actors do (each with :func:`fedsim.threads.group_threads`
    torch threads; torch kernels release the GIL); ``.remote()`` returns a pending result (a call
    that runs alone, below: its value) and :meth:`get` waits for it, a list's results in the list's
    order. The simulation still waits for every group after each phase (``lazy`` False): the phases,
    their order and their timings are the same as one after another. Actors are built at once, in the caller's thread.

    A call that runs alone (:func:`fedsim.threads.runs_alone`: every call of an actor class whose
    ``runs_alone`` is true, the federated server's, whose calls follow every group's of the phase;
    a method so marked, a group's aggregation) runs in the caller's thread as it is made, after the
    actor's previous call, with ``alone_threads`` torch threads (:func:`fedsim.threads.alone_threads`:
    the run's threads in all), not in the pool on one group's share of them: the groups' aggregations
    run one after another, each on every thread, as with ``workers`` 1. (With ``workers`` 1 every call
    runs that way already, on the process's threads: ``alone_threads`` is not used.)

    The driver waits for the first call of each method (by name, over all the actors) to end before
    it makes another call (the simulation waits for every phase, so that call runs alone). Two
    groups' first training calls side by side made one group's numbers differ in the last bit in
    about 1 process of 8, never once the first ran alone: oneMKL chose a vector-math kernel at its
    first call, raced (:mod:`fedsim.mkl_vml` now makes those calls as the groups are built); the wait
    guards any other choice made at first use (docs/performance.md)."""

    name = "local"
    lazy = False  # the simulation waits for a phase before it starts the next (in-process order)
    copies_returns = False  # a call's return value is the callee's own object (not copied out)
    workers, alone_threads = 1, 1
    _pool: ThreadPoolExecutor | None = None  # (a subclass that skips __init__ runs one after another)
    _warm: set[str] | None = None  # methods whose first call in the pool has ended (every actor's)

    def __init__(self, workers: int = 1, alone_threads: int = 1) -> None:
        self.workers, self.alone_threads = check_count("workers", workers), check_count("alone_threads", alone_threads)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fedsim-group") if workers > 1 else None

    def actor(self, cls: type, *args: Any, num_cpus: float = 1.0) -> Any:
        if self._warm is None:
            self._warm = set()
        return _LocalHandle(cls(*(_resolved(a) for a in args)), self._pool, self.alone_threads, self._warm)

    def put(self, obj: Any) -> Any:
        return obj

    def kill(self, handles: list[Any]) -> None:
        pass

    def get(self, refs: Any) -> Any:
        if isinstance(refs, list):
            return [_resolved(r) for r in refs]
        return _resolved(refs)

    def shutdown(self) -> None:
        """Wait for the calls still running (after an error in one group, the others') and end the threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class RayBackend:
    """Peers in Ray actors; messages travel through Ray's object store (actors receive the
    ObjectRefs of every group's parameters and fetch them; the driver never materialises them)."""

    name = "ray"
    lazy = True  # .remote() returns at once; the call runs while the driver submits more
    copies_returns = True  # an actor's return value is copied into the object store as the call ends

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self._started = init_ray(address, num_cpus, log_to_driver=True)
        # a Ray this call started on this machine (no address): its processes are this process's
        # descendants, on this host, in its PID namespace, under its user (fedsim.ray_outbox)
        self.started_here = self._started and not address
        import ray

        self.ray = ray

    def actor(self, cls: type, *args: Any, num_cpus: float = 1.0) -> Any:
        return self.ray.remote(num_cpus=num_cpus, **worker_options())(cls).remote(*args)

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def single_host(self) -> bool:
        """Whether this Ray is one node, this process's: every actor runs on this host (fedsim.ray_outbox).
        Never under Ray Client (``ray://``): there the node this process is told of is the server's."""
        from ray.util.client import ray as client

        if client.is_connected():
            return False
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        return len(nodes) == 1 and nodes[0].get("NodeID") == self.ray.get_runtime_context().get_node_id()

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` run once as a Ray task (no CPU asked: it runs beside the actors), its result."""
        return self.ray.get(self.ray.remote(num_cpus=0, max_retries=0, **worker_options())(fn).remote(*args))

    def kill(self, handles: list[Any]) -> None:
        """Free the actors' CPUs now (a shared Ray session may run more scenarios after this one)."""
        kill_actors(handles)

    def get(self, refs: Any) -> Any:
        return self.ray.get(refs)

    def shutdown(self) -> None:
        if self._started:
            shutdown_ray(self.ray)


def make_backend(
    kind: str, address: str | None, num_cpus: int | None = None, workers: int = 1, alone_threads: int = 1
) -> LocalBackend | RayBackend:
    """The run's backend: in-process with ``workers`` threads and ``alone_threads`` torch threads for
    an actor that runs alone (:class:`LocalBackend`), or Ray."""
    return LocalBackend(workers, alone_threads) if kind == "local" else RayBackend(address, num_cpus)
