"""Running a sweep's plan (:mod:`fedsim.sweep_plan`): :func:`execute_sweep` writes ``sweep.json`` and
runs every incomplete run, in this process one after another or as Ray tasks
(:func:`fedsim.backend.run_tasks`), each through :func:`run_one` (a :class:`fedsim.runner.Run`
with ``engine.backend: local``, resumed from its checkpoint where there is one) with a fixed
torch-thread budget (:mod:`fedsim.threads`). The ``fedsim sweep`` command is :mod:`fedsim.sweep`.
"""

from __future__ import annotations

import copy
import json
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim import mkl_branch, plugins
from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.errors import CorruptFileError, RunDirExistsError, RunInterruptedError, ScenarioError
from fedsim.scenario import parse
from fedsim.sweep_plan import PlannedRun, SweepPlan, engine_errors
from fedsim.threads import check_count, free_cpus


def run_one(data: dict[str, Any], run_dir: str, progress: Callable[[int, dict], None] | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Execute one run into ``run_dir``; resume it from ``checkpoint.pt`` when there is one.
    ``threads``: the run's torch threads (its share of the CPUs, :mod:`fedsim.threads`; None:
    from its ``engine`` section, :func:`fedsim.threads.group_threads`).

    Returns ``{"status": "done"|"complete"|"failed"|"interrupted", "summary"|"error": ...}``; never
    raises for a failing run (its traceback goes to ``run_dir/error.txt``)."""
    from fedsim import rundir
    from fedsim._runs import read_json
    from fedsim.runner import Run

    d = Path(run_dir)
    # whether the folder is the sweep's to mark on failure: absent, empty or fedsim's (one that holds
    # a user's files, e.g. on a node without the driver's filesystem, stays theirs: never marked)
    ours = (not d.exists() and not d.is_symlink()) or (
        d.is_dir() and not d.is_symlink() and (rundir.is_empty(d) or rundir.is_run_dir(d)))
    if (d / "summary.json").exists():
        return {"status": "complete", "summary": read_json(d / "summary.json")}  # bounded: one line if corrupt
    try:
        # the sweep's driver granted its plugins (fedsim sweep --plugin) and checked the scenario
        plugins.grant(data.get("plugins") or ())
        # missing data is one line naming dataset.data_dir (a cluster's run checks where the data is)
        sc = parse(data, str(d / "scenario.yaml"), require_data=True)
        run = Run(sc, d, threads=threads, fetch_final_params=False)  # a sweep reads the summaries only
        resume = all((d / f).exists() for f in ("checkpoint.pt", "scenario.yaml", "metrics.jsonl"))
        if not resume:
            run.create_dir(overwrite=True)
        (d / RUN_ERROR_FILE).unlink(missing_ok=True)
        summary = run.execute(progress=progress, resume=resume)
        # this process's oneMKL branch: a sweep's driver compares its Ray tasks' with its own
        return {"status": "done", "summary": summary, "resumed": resume, "mkl_branch": mkl_branch.current()}
    except Exception as e:  # noqa: BLE001 - one failing run must not end the sweep
        if isinstance(e, RunInterruptedError):  # Ctrl-C inside Run.execute: checkpointed, resumable
            return {"status": "interrupted", "error": str(e)}
        # not the sweep's folder, or another process's run in it (locked): nothing written into it
        if not ours or isinstance(e, (RunDirExistsError, rundir.RunLockedError)):
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        d.mkdir(parents=True, exist_ok=True)
        # the folder is the sweep's: marked as fedsim's, so a rerun retries the run and --overwrite may
        # clear it, even when it failed before Run.create_dir wrote the marker
        rundir.mark(d)
        (d / RUN_ERROR_FILE).write_text(traceback.format_exc())
        return {"status": "failed", "error": f"{type(e).__name__}: {e}"}


class Reporter:
    """Callbacks a sweep reports through (the CLI draws a progress bar; the default is silent)."""

    def start(self, total: int, complete: int) -> None: ...

    def run_started(self, run: PlannedRun) -> None: ...

    def round_done(self, run: PlannedRun, i: int, rec: dict) -> None: ...

    def run_finished(self, run: PlannedRun, result: dict[str, Any]) -> None: ...


@dataclass
class SweepResult:
    out: Path
    total: int
    already_complete: list[str]
    ran: list[str]
    failed: dict[str, str]
    invalid: list[str]
    kept: list[str] = field(default_factory=list)  # runs of an earlier grid sweep.json still lists (merged_index)


def _warm_features(plan: SweepPlan) -> None:
    """Compute each (dataset, backbone) feature cache once, before parallel runs race for it. Data
    not on this machine (a sweep on a cluster, ``--address``) is left to the runs, each of which
    checks its data (:func:`run_one`); a local sweep's data was checked when it was planned."""
    from fedsim.features import load_features

    seen = set()
    for r in plan.runs:
        sc = parse(copy.deepcopy(r.data))
        key = (sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir)
        if key not in seen:
            seen.add(key)
            try:
                load_features(*key)
            except FileNotFoundError:
                continue


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def merged_index(plan: SweepPlan, old: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """``plan``'s ``sweep.json`` index, and the runs of an earlier grid of the same sweep that it
    keeps listing: when ``old`` (the folder's index) has the same grid keys and the same base
    scenario, its listed runs whose folders exist and that this grid does not plan stay listed
    (a rerun of one axis value, or more seeds, extends the sweep that ``fedsim report`` and
    ``fedsim plot`` read instead of hiding the rest), ordered by the union of both grids' values."""
    index = plan.index()
    if not (isinstance(old, dict) and isinstance(old.get("grid"), dict) and list(old["grid"]) == list(plan.grid)
            and _key(old.get("base")) == _key(plan.base)):
        return index, []
    planned = {r["dir"] for r in index["runs"]} | {r["dir"] for r in index["invalid"]}
    kept = [r for r in old.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("overrides"), dict)
            and isinstance(r.get("dir"), str) and r["dir"] not in planned and (plan.out / r["dir"]).is_dir()
            and set(r["overrides"]) == set(plan.grid)]
    if not kept:
        return index, []
    grid = {k: list(old["grid"][k]) for k in plan.grid}
    for k, values in plan.grid.items():
        grid[k] += [v for v in values if _key(v) not in {_key(x) for x in grid[k]}]
    pos = {k: {_key(v): i for i, v in enumerate(vs)} for k, vs in grid.items()}
    runs = index["runs"] + kept
    runs.sort(key=lambda r: tuple(pos[k].get(_key(r["overrides"][k]), len(pos[k])) for k in grid))
    invalid = index["invalid"] + [r for r in old.get("invalid") or [] if isinstance(r, dict)
                                  and r.get("dir") not in planned and r.get("dir") not in {x["dir"] for x in kept}]
    return index | {"grid": grid, "runs": runs, "invalid": invalid}, [r["dir"] for r in kept]


def _write_index(plan: SweepPlan) -> list[str]:
    """Write ``plan.out/sweep.json`` (:func:`merged_index`); returns the earlier runs it keeps listing."""
    from fedsim._runs import _sweep_index
    from fedsim.rundir import atomic_write

    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        old = _sweep_index(plan.out)  # its run entries checked: folder names in the sweep
    except CorruptFileError:  # a planted or broken index is replaced, as before merging existed
        old = None
    index, kept = merged_index(plan, old)
    atomic_write(plan.out / "sweep.json", (json.dumps(index, indent=2, default=str) + "\n").encode())
    return kept


FOREIGN_ADVICE = "move it away or choose another --out"


def refuse_foreign_folders(plan: SweepPlan) -> None:
    """One line (:class:`~fedsim.errors.RunDirExistsError`), before anything is deleted, written or
    run, where the sweep would write into a folder fedsim did not make for it: ``--out`` a run
    directory (``fedsim run``'s: the sweep's runs and ``sweep.json`` would mix with its files), or a
    run's folder that exists with content fedsim did not write (``--overwrite`` deleted it; the
    rules of ``fedsim run``'s own directory, :mod:`fedsim.rundir`)."""
    from fedsim import rundir

    if rundir.is_run_dir(plan.out):
        raise RunDirExistsError(
            f"{plan.out} is a run directory (fedsim run's); a sweep writes its runs into a folder of their own: "
            "choose another --out"
        )
    for r in plan.runs:
        rundir.refuse_unsafe(r.dir, plan.out)
        rundir.refuse_foreign(r.dir, FOREIGN_ADVICE)


IN_PROCESS = "drop --address, or --local (without it the runs are Ray tasks, on the cluster at --address)"


def sweep_cluster(plan: SweepPlan, address: str | None, local: bool) -> str | None:
    """The Ray cluster the sweep runs its tasks on: ``address`` (``--address``), else the one the
    scenario's ``engine.address`` names (``plan.address``); None: a Ray of its own, or ``local``.
    :class:`ScenarioError` where the two differ, and where ``local`` would leave either unread (as
    ``fedsim run`` refuses an address with the local backend)."""
    if address and plan.address and address != plan.address:
        raise ScenarioError(
            f"--address {address} and {plan.source}'s engine.address {plan.address} name different Ray clusters; "
            f"drop --address to run on {plan.address}, or set the scenario's engine.address to {address}"
        )
    if local and plan.address and not address:
        raise ScenarioError(
            f"{plan.source}: engine.address {plan.address}: --local runs every run in this process, where no run "
            "reads it; drop --local (the runs are then Ray tasks on that cluster), or --set engine.address=null"
        )
    if address and local:  # in this process: the address would be ignored, as `fedsim run` refuses it
        unread = engine_errors({"backend": "local", "address": address}, IN_PROCESS)
        if unread:
            raise ScenarioError(unread[0])
    return None if local else address or plan.address


def execute_sweep(
    plan: SweepPlan,
    jobs: int | None = None,
    local: bool = False,
    address: str | None = None,
    reporter: Reporter | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> SweepResult:
    """Write ``sweep.json`` and run every incomplete run of ``plan`` (Ray tasks, on the cluster at
    ``address`` or the scenario's own, :func:`sweep_cluster`; or in order with ``local``).
    ``overwrite`` deletes the planned run folders first. ``threads``: each run's torch threads;
    default: on Ray the CPUs divided among the runs in flight
    (:func:`fedsim.threads.task_threads`), with ``local`` the CPUs free when the sweep starts
    (:func:`fedsim.threads.free_cpus`). Returns what happened."""
    if threads is not None:
        check_count("threads", threads)
    import shutil

    rep = reporter or Reporter()
    address = sweep_cluster(plan, address, local)
    if address:  # no live cluster there: one line, before any folder is touched
        from fedsim.backend import cluster_address

        cluster_address(address)
    refuse_foreign_folders(plan)
    if overwrite:
        for r in plan.runs:
            if r.dir.exists():
                shutil.rmtree(r.dir)  # a run directory fedsim made, or an empty folder (refuse_foreign_folders)
    kept = _write_index(plan)
    done_before = [r.name for r in plan.runs if r.complete]
    pending = [r for r in plan.runs if not r.complete]
    result = SweepResult(plan.out, len(plan.runs), done_before, [], {}, [n for n, _, _ in plan.invalid], kept)
    rep.start(len(plan.runs), len(done_before))
    if not pending:
        return result
    if local and threads is None:
        threads = free_cpus()  # before this process adds load of its own
    _warm_features(plan)

    def finished(r: PlannedRun, res: dict[str, Any]) -> None:
        if res["status"] in ("failed", "interrupted"):
            result.failed[r.name] = res["error"]
        else:
            result.ran.append(r.name)
        rep.run_finished(r, res)

    if local:
        for r in pending:
            rep.run_started(r)
            res = run_one(r.data, str(r.dir), progress=lambda i, rec, r=r: rep.round_done(r, i, rec), threads=threads)
            if res["status"] == "interrupted":
                raise KeyboardInterrupt(res["error"])
            finished(r, res)
    else:
        _execute_ray(pending, jobs, address, rep, finished, threads)
    return result


def _execute_ray(pending: list[PlannedRun], jobs: int | None, address: str | None, rep: Reporter, finished,
                 threads: int | None = None) -> None:
    from fedsim.backend import run_tasks

    branches: list[str | None] = []  # the oneMKL branch each task that ran a run ran with

    def done(r: PlannedRun, res: dict[str, Any] | None, err: BaseException | None) -> None:
        if err is not None:  # a worker crash (OOM, killed) fails one run
            res = {"status": "failed", "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
        elif "mkl_branch" in res:
            branches.append(res["mkl_branch"])
        finished(r, res)

    run_tasks(run_one, [(r, (r.data, str(r.dir))) for r in pending], done, jobs, address, started=rep.run_started,
              threads_kw="threads", threads=threads)
    line = mkl_branch.differing(mkl_branch.current(), branches, "the sweep's Ray tasks")
    if line is not None:
        warnings.warn(line, RuntimeWarning, stacklevel=3)
