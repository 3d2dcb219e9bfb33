"""``fedsim sweep``: run the cartesian product of scenario overrides, in parallel on Ray.

A sweep is a base scenario plus a *grid*: dotted scenario keys, each with a list of values
(``strategy.name=fedavg,krum``, ``seed=0,1,2``). Every combination is one run in its own folder
under the sweep directory, named from its overrides in grid order::

    runs/quickstart-sweep/
        sweep.json                                       the index: base scenario, grid, runs
        strategy.name=krum__peers.byzantine_fraction=0.3__seed=1/   a normal run directory
        ...

A run is complete when its ``summary.json`` exists. Running the same command again skips the
complete runs and restarts the others (resuming from ``checkpoint.pt`` where there is one), so a
killed sweep continues where it stopped. Each run executes with ``engine.backend: local`` inside
one Ray task (or in this process with ``--local``); metrics do not depend on the engine. Each run
gets a fixed torch-thread budget, passed in as ``Run(threads=...)`` (:mod:`fedsim.threads`).

The grid comes from ``--grid KEY=V1,V2`` options and/or a top-level ``sweep:`` mapping in the
scenario YAML (removed before the scenario is validated)::

    sweep:
      strategy.name: [fedavg, krum, median]
      peers: {byzantine_fraction: [0.1, 0.3]}   # nested mappings read as dotted keys
      seed: [0, 1, 2]

Planning (the grid, folder names, :func:`plan_sweep`) is :mod:`fedsim.sweep_plan`, re-exported
here; this module runs a plan (:func:`execute_sweep`, locally or in Ray tasks) and is the
``fedsim sweep`` command.
"""

from __future__ import annotations

import copy
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.errors import RunInterruptedError
from fedsim.scenario import ScenarioError, parse, parse_sets
from fedsim.sweep_plan import (
    _UNSAFE,
    MAX_NAME,
    PlannedRun,
    SweepPlan,
    _comparable,
    _digest,
    _name_part,
    check_existing,
    expand,
    grid_from_section,
    parse_grid,
    plan_sweep,
    read_scenario_with_sweep,
    run_name,
    split_values,
)
from fedsim.threads import free_cpus

__all__ = [  # its own names and those of fedsim.sweep_plan it re-exports
    "MAX_NAME",
    "PlannedRun",
    "Reporter",
    "SweepPlan",
    "SweepResult",
    "check_existing",
    "execute_sweep",
    "expand",
    "free_cpus",
    "grid_from_section",
    "parse_grid",
    "plan_sweep",
    "read_scenario_with_sweep",
    "run_name",
    "run_one",
    "split_values",
    "sweep",
    "_UNSAFE",
    "_comparable",
    "_digest",
    "_execute_ray",
    "_name_part",
    "_warm_features",
    "_write_index",
]


# --------------------------------------------------------------------------- executing
def run_one(data: dict[str, Any], run_dir: str, progress: Callable[[int, dict], None] | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Execute one run into ``run_dir``; resume it from ``checkpoint.pt`` when there is one.
    ``threads``: the run's torch threads (its share of the CPUs, :mod:`fedsim.threads`; None:
    from its ``engine`` section, :func:`fedsim.threads.group_threads`).

    Returns ``{"status": "done"|"complete"|"failed"|"interrupted", "summary"|"error": ...}``; never
    raises for a failing run (its traceback goes to ``run_dir/error.txt``)."""
    from fedsim.runner import Run

    d = Path(run_dir)
    if (d / "summary.json").exists():
        return {"status": "complete", "summary": json.loads((d / "summary.json").read_text())}
    try:
        sc = parse(data, str(d / "scenario.yaml"))
        run = Run(sc, d, threads=threads)
        resume = all((d / f).exists() for f in ("checkpoint.pt", "scenario.yaml", "metrics.jsonl"))
        if not resume:
            run.create_dir(overwrite=True)
        (d / RUN_ERROR_FILE).unlink(missing_ok=True)
        summary = run.execute(progress=progress, resume=resume)
        return {"status": "done", "summary": summary, "resumed": resume}
    except Exception as e:  # noqa: BLE001 - one failing run must not end the sweep
        if isinstance(e, RunInterruptedError):  # Ctrl-C inside Run.execute: checkpointed, resumable
            return {"status": "interrupted", "error": str(e)}
        d.mkdir(parents=True, exist_ok=True)
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


def _warm_features(plan: SweepPlan) -> None:
    """Compute each (dataset, backbone) feature cache once, before parallel runs race for it."""
    from fedsim.features import load_features

    seen = set()
    for r in plan.runs:
        sc = parse(copy.deepcopy(r.data))
        key = (sc.dataset.name, sc.backbone.name, sc.dataset.data_dir, sc.backbone.cache_dir)
        if key not in seen:
            seen.add(key)
            load_features(*key)


def _write_index(plan: SweepPlan) -> None:
    plan.out.mkdir(parents=True, exist_ok=True)
    from fedsim.rundir import atomic_write

    atomic_write(plan.out / "sweep.json", (json.dumps(plan.index(), indent=2, default=str) + "\n").encode())


def execute_sweep(
    plan: SweepPlan,
    jobs: int | None = None,
    local: bool = False,
    address: str | None = None,
    reporter: Reporter | None = None,
    overwrite: bool = False,
    threads: int | None = None,
) -> SweepResult:
    """Write ``sweep.json`` and run every incomplete run of ``plan`` (Ray tasks, or in order with
    ``local``). ``overwrite`` deletes the planned run folders first. ``threads``: each run's torch
    threads; default: on Ray the CPUs divided among the runs in flight
    (:func:`fedsim.threads.task_threads`), with ``local`` the CPUs free when the sweep starts
    (:func:`fedsim.threads.free_cpus`). Returns what happened."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads: expected an integer >= 1, got {threads!r}")
    import shutil

    rep = reporter or Reporter()
    if overwrite:
        for r in plan.runs:
            if r.dir.exists():
                shutil.rmtree(r.dir)
    _write_index(plan)
    done_before = [r.name for r in plan.runs if r.complete]
    pending = [r for r in plan.runs if not r.complete]
    result = SweepResult(plan.out, len(plan.runs), done_before, [], {}, [n for n, _, _ in plan.invalid])
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

    def done(r: PlannedRun, res: dict[str, Any] | None, err: BaseException | None) -> None:
        if err is not None:  # a worker crash (OOM, killed) fails one run
            res = {"status": "failed", "error": f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"}
        finished(r, res)

    run_tasks(run_one, [(r, (r.data, str(r.dir))) for r in pending], done, jobs, address, started=rep.run_started,
              threads_kw="threads", threads=threads)


# --------------------------------------------------------------------------- CLI
class _BarReporter(Reporter):
    def __init__(self, bar, name: str) -> None:
        self.bar, self.name = bar, name
        self.task = None
        self.rounds = None

    def start(self, total: int, complete: int) -> None:
        self.task = self.bar.add_task(f"sweep {self.name}", total=total, completed=complete, last="")

    def run_started(self, run: PlannedRun) -> None:
        if self.rounds is not None:
            self.bar.remove_task(self.rounds)
            self.rounds = None

    def round_done(self, run: PlannedRun, i: int, rec: dict) -> None:
        if self.rounds is None:
            self.rounds = self.bar.add_task(f"  {run.name}"[:60], total=run.rounds, last="")
        acc = f"honest acc {rec['accuracy_mean']:.3f}" if "accuracy_mean" in rec else ""
        self.bar.update(self.rounds, completed=i + 1, **({"last": acc} if acc else {}))

    def run_finished(self, run: PlannedRun, result: dict[str, Any]) -> None:
        if self.rounds is not None:
            self.bar.remove_task(self.rounds)
            self.rounds = None
        if result["status"] in ("failed", "interrupted"):
            self.bar.console.print(f"[red]failed[/red] {run.name}: {result['error']} (see {run.dir / RUN_ERROR_FILE})")
            last = f"[red]failed {run.name}"
        else:
            acc = (result.get("summary") or {}).get("final_accuracy_mean")
            last = f"{run.name}: {acc:.3f}" if isinstance(acc, float) else run.name
        self.bar.update(self.task, advance=1, last=last[-70:])


@click.command(short_help="Run a grid of scenario overrides in parallel on Ray (resumable).")
@click.argument("scenario", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--grid",
    "-g",
    "grids",
    multiple=True,
    metavar="KEY=V1,V2",
    help="Sweep KEY over values (repeat for more keys; the runs are the cartesian product).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Fixed override for every run.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sweep directory (default: <output.dir>/<name>-sweep).",
)
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Runs at once (default: one per CPU of Ray).")
@click.option("--local", is_flag=True, help="Run one after another in this process, without Ray.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Torch threads per run (default: with Ray, the CPUs divided among the runs at once, at least 1; "
    "with --local, the CPUs free when the sweep starts: CPUs minus the load average, at least 1).",
)
@click.option("--address", help="Ray cluster to run on: 'auto' or ray://HOST:10001.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Leave out combinations that fail a constraint (e.g. Krum n ≤ 2f+2); unknown names and keys stay errors.",
)
@click.option("--overwrite", is_flag=True, help="Delete the sweep's run folders and run everything again.")
@click.option("--dry-run", is_flag=True, help="List the runs and whether each is complete; run nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def sweep(
    scenario: Path,
    grids: tuple[str, ...],
    sets: tuple[str, ...],
    out: Path | None,
    jobs: int | None,
    local: bool,
    threads: int | None,
    address: str | None,
    skip_invalid: bool,
    overwrite: bool,
    dry_run: bool,
    quiet: bool,
) -> None:
    """Run SCENARIO for every combination of --grid values (and of its YAML `sweep:` section),
    in parallel on Ray, each run in its own folder; then `fedsim report` and `fedsim plot` the
    sweep directory.

    Complete runs (with summary.json) are skipped, so after a kill or Ctrl-C the same command
    continues where it stopped. Runs use engine.backend=local inside Ray tasks.

    Threads: each run gets a fixed number of torch threads, so the runs at once never ask for more
    threads than there are CPUs (oversubscribed threads wait on each other): with Ray, each task
    asks for and uses CPUs ÷ --jobs of them (at least 1; default --jobs: one run per CPU, 1
    thread each); with --local, the CPUs not busy when the sweep starts (CPUs minus the 1-minute
    load average, at least 1). --threads N sets it (docs/performance.md, "Thread policy").

    \b
    Examples:
      fedsim sweep scenarios/quickstart.yaml -g strategy.name=fedavg,median,krum \\
          -g peers.attack.name=alie,sign_flip -g peers.byzantine_fraction=0.1,0.2 \\
          -g seed=0,1,2 --set rounds=20 --skip-invalid
      fedsim sweep scenarios/quickstart.yaml -g partition.alpha=0.1,1.0 --jobs 2 --out runs/alpha
      fedsim sweep my_sweep.yaml --dry-run          # list the runs of a YAML `sweep:` section
      fedsim report runs/quickstart-sweep && fedsim plot runs/quickstart-sweep

    \b
    A `sweep:` section in the scenario YAML, same as the -g options:
      sweep:
        strategy.name: [fedavg, krum]
        peers.byzantine_fraction: [0.1, 0.3]
        seed: [0, 1, 2]

    Run folders are named from the overrides, e.g. strategy.name=krum__peers.byzantine_fraction=0.3__seed=1;
    sweep.json indexes them.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    try:
        grid = parse_grid(grids)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--grid") from None
    try:
        plan = plan_sweep(scenario, grid, parse_sets(sets), out, skip_invalid)
    except ScenarioError as e:
        for line in e.errors[:-1]:  # one line per error (typos in the grid), the last as the exit message
            click.echo(f"Error: {line}", err=True)
        raise click.ClickException(e.errors[-1]) from None
    console = Console(soft_wrap=True)
    for n, _, err in plan.invalid:
        console.print(f"[yellow]skipped (invalid)[/yellow] {n}: {err.split(': ', 2)[-1]}")
    if not plan.runs:
        raise click.ClickException("no valid run in the grid")
    if not overwrite:
        stale = check_existing(plan)
        if stale:
            raise click.ClickException(
                "run folders hold a different scenario than this sweep would run:\n  "
                + "\n  ".join(stale[:5])
                + ("\n  ..." if len(stale) > 5 else "")
                + "\npass --overwrite to rerun them, or choose another --out"
            )
    if dry_run:
        for r in plan.runs:
            click.echo(f"{'complete' if r.complete else 'to run  '}  {r.dir}")
        n_done = sum(r.complete for r in plan.runs)
        click.echo(f"{len(plan.runs)} runs ({n_done} complete, {len(plan.runs) - n_done} to run) in {plan.out}")
        return
    t0 = time.time()
    try:
        if quiet:
            res = execute_sweep(plan, jobs, local, address, None, overwrite, threads)
        else:
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[last]}"),
                console=console,
            ) as bar:
                res = execute_sweep(plan, jobs, local, address, _BarReporter(bar, plan.name), overwrite, threads)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; complete runs are kept. Continue with the same command (→ {plan.out})")
        raise SystemExit(130) from None
    console.print(
        f"{res.total} run{'' if res.total == 1 else 's'} in {plan.out}: "
        f"{len(res.already_complete)} already complete, {len(res.ran)} ran"
        f"{f', [red]{len(res.failed)} failed[/red]' if res.failed else ''}"
        f"{f', {len(res.invalid)} invalid left out' if res.invalid else ''} ({time.time() - t0:.1f} s)"
    )
    if res.failed:
        for n, err in res.failed.items():
            console.print(f"  [red]{n}[/red]: {err}")
        console.print("fix the cause and run the same command again: only these runs will run")
        raise SystemExit(1)
    console.print(f"next: fedsim report {plan.out}   ·   fedsim plot {plan.out}")
