"""fedsim's thread policy: OpenMP threads sleep rather than spin while they wait (a busy core must
not stall the others: docs/performance.md, "Quiet and with one core busy"), and each run of a sweep
gets a fixed thread budget (fedsim.threads: the CPUs divided among the runs at once, or the free ones)."""

import os
import subprocess
import sys

import pytest

from fedsim.threads import free_cpus, group_threads, task_threads, usable_cpus


def _policy(env: dict) -> str:
    code = "import fedsim, os; print(os.environ['OMP_WAIT_POLICY'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_sets_a_passive_wait_policy_and_a_user_value_wins():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env).strip() == "PASSIVE"
    assert _policy(env | {"OMP_WAIT_POLICY": "ACTIVE"}).strip() == "ACTIVE"


def test_the_cli_sets_it_before_torch_loads():
    code = ("import sys; import fedsim.cli; import os; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PASSIVE", "False"]  # set, and torch not yet loaded: OpenMP will read it


# ------------------------------------------------------------------ thread budgets (issue 19 item 1)

def test_task_threads_divides_the_cpus_among_the_runs_at_once():
    assert task_threads(2, 2) == 1 and task_threads(2, 1) == 2 and task_threads(8, 3) == 2
    assert task_threads(2, None) == 1  # default: one run per CPU
    assert task_threads(2, 5) == 1  # more runs than CPUs: still one thread each
    with pytest.raises(ValueError, match="jobs"):
        task_threads(2, 0)


def test_free_cpus_is_the_cpus_minus_the_load_at_least_one():
    assert free_cpus(load=0.0, cpus=4) == 4
    assert free_cpus(load=1.2, cpus=4) == 3
    assert free_cpus(load=2.6, cpus=4) == 1
    assert free_cpus(load=9.0, cpus=2) == 1
    assert 1 <= free_cpus() <= (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="load"):
        free_cpus(load=-1.0, cpus=2)


def test_a_run_takes_the_budget_it_is_given(tmp_path, small_scenario):
    from fedsim.prepare import prepare
    from fedsim.runner import Run
    from fedsim.scenario import parse

    sc = parse(small_scenario(engine={"backend": "local", "num_actors": 2, "local_parallel": "off"}))
    assert group_threads(sc) == min(2, usable_cpus())  # in-process one after another: num_actors x cpus_per_actor
    assert all(s.threads == 1 for s in prepare(sc, threads=1).setups)
    with pytest.raises(ValueError, match="threads: expected an integer >= 1"):
        Run(sc, tmp_path / "r", threads=0)


def test_in_process_groups_get_the_cpus_this_process_may_use_not_the_machines(small_scenario, monkeypatch):
    """One source of truth for CPUs (fedsim.threads.usable_cpus): a process pinned to 1 of 8 CPUs
    gives each in-process group 1 thread, and a local Ray instance 1 CPU per actor asked for."""
    from fedsim.limits import local_ray_cpus
    from fedsim.scenario import parse

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert usable_cpus() == 1
    sc = parse(small_scenario(engine={"backend": "local", "num_actors": 4, "local_parallel": "off"}))
    assert group_threads(sc) == 1
    assert group_threads(sc, budget=3) == 3  # a caller's budget wins
    assert local_ray_cpus(parse(small_scenario(engine={"backend": "ray", "num_actors": 2}))) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    assert group_threads(sc) == 4


AUTO = {"local_parallel": "auto"}


@pytest.mark.parametrize(
    ("engine", "cpus", "budget", "workers", "threads"),
    [
        ({"num_actors": 2, **AUTO}, 2, None, 2, 1),  # side by side: one torch thread each, the op runs inline
        ({"num_actors": 4, **AUTO}, 2, None, 2, 1),  # more groups than CPUs: as many at once as CPUs
        ({"num_actors": 2, **AUTO}, 8, None, 2, 1),  # num_actors x cpus_per_actor threads in all, as before
        ({"num_actors": 2, "cpus_per_actor": 4, **AUTO}, 8, None, 2, 4),
        ({"num_actors": 2, "cpus_per_actor": 3, **AUTO}, 2, None, 2, 1),  # at most the usable CPUs
        ({"num_actors": 4, **AUTO}, 8, 2, 2, 1),  # a sweep task's budget is the run's threads in all
        ({"num_actors": 2, **AUTO}, 1, None, 1, 1),  # one usable CPU: one after another, as before
        ({"num_actors": 1, "cpus_per_actor": 2, **AUTO}, 2, None, 1, 2),  # a single group: all its threads
        ({"num_actors": 2, "local_parallel": "off"}, 2, None, 1, 2),
        ({"num_actors": 2}, 2, None, 1, 2),  # the default: one after another (auto's rare difference, issue 19)
        ({"num_actors": 2, "backend": "ray", **AUTO}, 2, None, 1, 1),  # Ray: one per actor, its own process
    ],
)
def test_in_process_groups_side_by_side_divide_the_threads(small_scenario, monkeypatch, engine, cpus, budget,
                                                           workers, threads):
    """fedsim.threads.local_workers (the LocalBackend's pool) and group_threads (each group's torch
    threads) from one rule: workers x threads never exceeds the run's threads."""
    from fedsim.scenario import parse
    from fedsim.threads import local_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    sc = parse(small_scenario(engine={"backend": "local", **engine}))
    assert (local_workers(sc, budget), group_threads(sc, budget)) == (workers, threads)


def test_a_run_uses_the_workers_and_threads_threads_decides(small_scenario, monkeypatch, tmp_path):
    """The runner builds its LocalBackend with fedsim.threads.local_workers, and the groups set
    group_threads torch threads: side by side on 2 CPUs, 1 each."""
    import torch

    import fedsim.runner
    from fedsim.backend import LocalBackend
    from fedsim.scenario import parse

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    made: list[tuple[int, int]] = []

    class Spy(LocalBackend):
        def __init__(self, workers: int = 1, alone_threads: int = 1) -> None:
            made.append((workers, alone_threads))
            super().__init__(workers, alone_threads)

    monkeypatch.setattr(fedsim.runner, "make_backend",
                        lambda kind, address, cpus, workers, alone_threads: Spy(workers, alone_threads))
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # the caller's own (not the run's 1 per group, nor its 2 in all)
    try:
        from fedsim.runner import Run

        run = Run(parse(small_scenario(rounds=1, **{"engine.local_parallel": "auto"})), tmp_path / "r")
        run.create_dir()
        run.execute()
        assert made == [(2, 2)] and all(s.threads == 1 for s in run.prepared.setups)
        assert torch.get_num_threads() == 3  # the caller's thread count given back
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("engine", "cpus", "budget", "alone"),
    [
        ({"num_actors": 2}, 2, None, 2),  # side by side, 1 thread each: the server alone gets both
        ({"num_actors": 2, "cpus_per_actor": 4}, 8, None, 8),
        ({"num_actors": 4}, 8, 2, 2),  # a sweep task's budget
        ({"num_actors": 2, "local_parallel": "off"}, 2, None, 2),  # one after another: what each group has
        ({"num_actors": 2}, 1, None, 1),
    ],
)
def test_a_call_that_runs_alone_gets_the_runs_threads(small_scenario, monkeypatch, engine, cpus, budget, alone):
    from fedsim.scenario import parse
    from fedsim.threads import alone_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert alone_threads(parse(small_scenario(engine={"backend": "local", **engine})), budget) == alone


def test_local_backend_runs_an_alone_actor_in_the_callers_thread_with_its_threads():
    """An actor class with ``runs_alone`` (the federated server) runs its calls in the caller's thread
    with ``alone_threads`` torch threads, its pending arguments resolved; the groups' in the pool
    with the process's (1 here); the caller's thread count is back afterwards."""
    import threading

    import torch

    from fedsim.backend import LocalBackend

    class Group:
        def where(self, x=None):
            return threading.current_thread().name, torch.get_num_threads(), x

    class Alone(Group):
        runs_alone = True

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = LocalBackend(2, alone_threads=2)
        g, a = b.actor(Group), b.actor(Alone)
        name, threads, _ = b.get(g.where.remote())
        assert name.startswith("fedsim-group") and threads == 1
        pending = g.where.remote(7)
        name, threads, x = b.get(a.where.remote(pending))
        assert (name, threads, x[2]) == (threading.current_thread().name, 2, 7)
        assert torch.get_num_threads() == 1
        one = LocalBackend(1, alone_threads=2)  # one after another: every call now, the process's threads
        assert one.get(one.actor(Alone).where.remote())[1] == 1
        b.shutdown()
    finally:
        torch.set_num_threads(before)


def test_local_backend_runs_a_method_marked_alone_in_the_callers_thread_after_the_actors_last_call():
    """A method marked :func:`fedsim.threads.runs_alone` on an actor whose other calls run in the pool
    runs in the caller's thread with ``alone_threads`` torch threads, once the actor's previous call
    (still running in the pool) has ended: an actor's calls stay in order."""
    import threading
    import time

    import torch

    from fedsim.backend import LocalBackend
    from fedsim.threads import runs_alone

    order: list[str] = []

    class Group:
        def slow(self):
            time.sleep(0.2)
            order.append("slow")
            return threading.current_thread().name, torch.get_num_threads()

        @runs_alone
        def aggregate(self):
            order.append("aggregate")
            return threading.current_thread().name, torch.get_num_threads()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b = LocalBackend(2, alone_threads=2)
        g = b.actor(Group)
        pending = g.slow.remote()
        assert b.get(g.aggregate.remote()) == (threading.current_thread().name, 2)
        assert order == ["slow", "aggregate"] and b.get(pending)[0].startswith("fedsim-group")
        assert torch.get_num_threads() == 1
        b.shutdown()
    finally:
        torch.set_num_threads(before)


def test_decentralized_groups_train_side_by_side_and_aggregate_one_after_another(small_scenario, monkeypatch,
                                                                                tmp_path):
    """In-process on 2 CPUs with ``auto``: each group trains in the pool on 1 torch thread, and aggregates
    in the driver's thread on both, one group after another (fedsim.threads.runs_alone)."""
    import functools
    import threading

    import torch

    from fedsim.peers import PeerGroup
    from fedsim.runner import Run
    from fedsim.scenario import parse

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen: dict[str, set] = {"train": set(), "aggregate": set()}

    def spy(name):
        f = getattr(PeerGroup, name)

        @functools.wraps(f)  # (keeps the method's marks)
        def wrapped(self, *a, **k):
            seen[name].add((threading.current_thread().name.split("_")[0], torch.get_num_threads()))
            return f(self, *a, **k)

        return wrapped

    for name in seen:
        monkeypatch.setattr(PeerGroup, name, spy(name))
    before = torch.get_num_threads()
    try:
        run = Run(parse(small_scenario(rounds=2, **{"engine.local_parallel": "auto"})), tmp_path / "r")
        run.create_dir()
        run.execute()
    finally:
        torch.set_num_threads(before)
    assert seen == {"train": {("fedsim-group", 1)}, "aggregate": {(threading.current_thread().name, 2)}}


def test_a_pool_calls_result_lives_only_as_long_as_its_caller_keeps_it():
    """The actor's call order is kept by a marker, not by the call's future: once the caller drops
    the pending result, the value is freed (a group's state copy used to live until the actor's next call)."""
    import gc
    import weakref

    from fedsim.backend import LocalBackend

    class Value:
        pass

    class Group:
        def make(self):
            return Value()

    b = LocalBackend(2)
    g = b.actor(Group)
    ref = g.make.remote()
    value = weakref.ref(b.get(ref))
    del ref
    gc.collect()
    assert value() is None
    b.shutdown()


def test_a_call_the_pool_refuses_raises_and_does_not_block_the_actors_next_call():
    import threading

    from fedsim.backend import LocalBackend

    class Group:
        def f(self):
            return 1

    b = LocalBackend(2)
    g = b.actor(Group)
    assert b.get(g.f.remote()) == 1
    b.shutdown()
    errors: list[BaseException] = []

    def twice():
        for _ in range(2):
            try:
                g.f.remote()
            except RuntimeError as e:
                errors.append(e)

    t = threading.Thread(target=twice, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and len(errors) == 2


def test_the_federated_server_aggregates_with_the_runs_threads_in_process(small_scenario, monkeypatch, tmp_path):
    """Groups side by side on 2 CPUs (``auto``, 1 torch thread each): the server's aggregation runs in the
    driver's thread on both (N = 1,000: 17 ms on one against 11 ms, docs/performance.md)."""
    import threading

    import torch

    import fedsim.server
    from fedsim.runner import Run
    from fedsim.scenario import parse

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    seen: list[tuple[str, int]] = []
    aggregate = fedsim.server.Server.aggregate

    def spy(self, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return aggregate(self, *a, **k)

    monkeypatch.setattr(fedsim.server.Server, "aggregate", spy)
    before = torch.get_num_threads()
    try:
        run = Run(parse(small_scenario(rounds=2, mode="federated", engine={"backend": "local", "num_actors": 2,
                                                                           "local_parallel": "auto"})),
                  tmp_path / "r")
        run.create_dir()
        run.execute()
    finally:
        torch.set_num_threads(before)
    assert seen == [(threading.current_thread().name, 2)] * 2


def test_a_local_sweep_passes_the_free_cpus_or_the_given_threads(tmp_path, monkeypatch):
    import yaml

    import fedsim.sweep_execute
    from fedsim.sweep_execute import execute_sweep
    from fedsim.sweep_plan import plan_sweep

    data = {"name": "t", "dataset": {"name": "sklearn_digits"},
            "backbone": {"name": "identity", "cache_dir": str(tmp_path / "cache")}, "peers": {"count": 4},
            "topology": {"kind": "k_regular", "degree": 2}, "rounds": 1, "engine": {"backend": "local"}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    seen = []
    monkeypatch.setattr(fedsim.sweep_execute, "run_one", lambda d, r, progress=None, threads=None: seen.append(threads)
                        or {"status": "done", "summary": {}})
    monkeypatch.setattr(fedsim.sweep_execute, "free_cpus", lambda: 7)
    execute_sweep(plan_sweep(tmp_path / "s.yaml", {"seed": [0, 1]}, out=tmp_path / "a"), local=True)
    execute_sweep(plan_sweep(tmp_path / "s.yaml", {"seed": [0]}, out=tmp_path / "b"), local=True, threads=3)
    assert seen == [7, 7, 3]
    with pytest.raises(ValueError, match="threads"):
        execute_sweep(plan_sweep(tmp_path / "s.yaml", {"seed": [0]}, out=tmp_path / "c"), local=True, threads=0)


def test_ray_sweep_tasks_get_the_cpus_divided_by_the_jobs(ray_session):
    from fedsim.backend import run_tasks

    cpus = int(ray_session.cluster_resources()["CPU"])  # 4 (conftest)

    def got(jobs, threads=None):
        out = {}
        run_tasks(lambda k, threads: threads, [(k, (k,)) for k in range(2)],
                  lambda k, res, err: out.__setitem__(k, res if err is None else err), jobs,
                  threads_kw="threads", threads=threads)
        return sorted(out.values())

    assert got(2) == [cpus // 2] * 2
    assert got(None) == [1, 1]
    assert got(1, threads=2) == [2, 2]


def test_ray_sweep_refuses_more_threads_than_a_node_has(ray_session):
    from fedsim.backend import run_tasks

    cpus = int(ray_session.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match=f"more than the {cpus} CPUs"):
        run_tasks(lambda k, threads: threads, [(0, (0,))], lambda *a: None, 1, threads_kw="threads",
                  threads=cpus + 1)


def test_an_unquoted_off_in_yaml_is_the_off_layout(small_scenario, tmp_path):
    """YAML 1.1 reads ``local_parallel: off`` as false (and ``on`` as true): the scenario file and
    ``--set engine.local_parallel=off`` mean the layout 'off', not a type error."""
    import yaml

    from fedsim.scenario import load, parse

    d = small_scenario()
    d["engine"]["local_parallel"] = "PLACEHOLDER"
    text = yaml.safe_dump(d).replace("PLACEHOLDER", "off")
    (tmp_path / "s.yaml").write_text(text)
    assert "local_parallel: off" in text and yaml.safe_load(text)["engine"]["local_parallel"] is False
    assert load(tmp_path / "s.yaml").engine.local_parallel == "off"
    assert parse(small_scenario(**{"engine.local_parallel": True})).engine.local_parallel == "auto"
    with pytest.raises(Exception, match="input should be 'auto' or 'off'"):
        parse(small_scenario(**{"engine.local_parallel": "maybe"}))


def test_the_ray_server_takes_the_groups_threads_on_one_host_only(small_scenario, monkeypatch):
    """Its calls never overlap a group's: on one host it computes on the CPUs the groups hold
    (capped at the CPUs this process may use); on a cluster of several nodes, or for a model
    section on the CPU (one thread in every layout), it keeps its own share."""
    from fedsim import threads
    from fedsim.scenario import parse

    monkeypatch.setattr(threads, "usable_cpus", lambda: 8)
    fed = {"mode": "federated", "engine.backend": "ray"}

    def ray(**engine):
        return parse(small_scenario(**fed, **{f"engine.{k}": v for k, v in engine.items()}))

    three = ray(num_actors=3)
    assert threads.ray_server_threads(three, 1, True) == 3  # the 3 CPUs Ray holds for the groups
    assert threads.ray_server_threads(three, 2, False) == 2  # several nodes: its own share
    assert threads.ray_server_threads(three, 4, True) == 4  # at least its own share (a caller's budget)
    assert threads.ray_server_threads(ray(num_actors=3, cpus_per_actor=4), 4, True) == 8  # at most usable
    assert threads.ray_server_threads(ray(num_actors=50), 1, True) == 8  # 8 groups: one per peer
    assert threads.ray_server_threads(ray(num_actors=4, cpus_per_actor=0.5), 1, True) == 2  # whole CPUs held
    assert threads.ray_server_threads(ray(num_actors=1, cpus_per_actor=0.5), 1, True) == 1
    # on one host the count the in-process server runs with, in either in-process layout
    for engine in ({"num_actors": 3}, {"num_actors": 4, "cpus_per_actor": 0.5}, {"num_actors": 2, "cpus_per_actor": 3}):
        sc = ray(**engine)
        for layout in ("off", "auto"):
            over = {"engine.backend": "local", "engine.local_parallel": layout,
                    **{f"engine.{k}": v for k, v in engine.items()}}
            local = parse(small_scenario(mode="federated", **over))
            assert threads.ray_server_threads(sc, threads.group_threads(sc), True) == threads.alone_threads(local)
    monkeypatch.setattr(threads, "fixed_threads", lambda sc: True)
    assert threads.ray_server_threads(three, 2, True) == 1
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="per_group"):
            threads.ray_server_threads(three, bad, True)


@pytest.mark.parametrize("rule", ["fedavg", "median", "krum"])
def test_the_federated_server_on_ray_aggregates_on_the_groups_threads_with_the_same_numbers(
        small_scenario, ray_session, monkeypatch, tmp_path, rule):
    """On Ray on one host the server actor runs on the groups' threads (3 groups of one thread, 4
    CPUs usable: 3), and the run's metrics and final heads are the bits of the in-process run."""
    from fedsim import threads
    from fedsim.backend import RayBackend
    from fedsim.runner import Run
    from fedsim.scenario import parse

    monkeypatch.setattr(threads, "usable_cpus", lambda: 4)
    seen: list[int] = []

    def run(backend: str) -> Run:
        sc = parse(small_scenario(name=backend, mode="federated", **{
            "engine.backend": backend, "engine.num_actors": 3, "strategy.name": rule,
            **({"peers.byzantine": 1, "peers.attack": {"name": "alie"}} if rule != "fedavg" else {})}))
        r = Run(sc, tmp_path / f"{backend}-{len(seen)}")
        r.create_dir()

        def spy(i, rec):
            if backend == "ray" and i == 0:
                seen.append(ray_session.get(r.server.torch_threads.remote()))

        r.execute(progress=spy)
        return r

    local, ray = run("local"), run("ray")
    assert seen == [3]
    # a Ray of several nodes (the groups' CPUs may be elsewhere): the server keeps its own thread
    monkeypatch.setattr(RayBackend, "single_host", lambda self: False)
    run("ray")
    assert seen == [3, 1]
    assert (local.dir / "metrics.jsonl").read_bytes() == (ray.dir / "metrics.jsonl").read_bytes()
    assert (local.final_params == ray.final_params).all()
