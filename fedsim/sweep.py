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

Planning (the grid, folder names, :func:`~fedsim.sweep_plan.plan_sweep`) is :mod:`fedsim.sweep_plan`,
running a plan (:func:`~fedsim.sweep_execute.execute_sweep`, locally or in Ray tasks)
:mod:`fedsim.sweep_execute`; this module is the ``fedsim sweep`` command.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.cli_plugin import plugin_option
from fedsim.errors import RunInterruptedError
from fedsim.scenario import ScenarioError, parse_sets
from fedsim.sweep_execute import Reporter, execute_sweep
from fedsim.sweep_plan import PlannedRun, check_existing, parse_grid, plan_sweep


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
@click.option(
    "--address",
    help="Ray cluster to run the runs on, as Ray tasks: 'auto' or ray://HOST:10001 (not with --local; default: "
    "the scenario's engine.address with backend ray, else a Ray of the sweep's own).",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Leave out combinations that fail a constraint (e.g. Krum n ≤ 2f+2); unknown names and keys stay errors.",
)
@click.option("--overwrite", is_flag=True, help="Delete the sweep's run folders, with everything in them, and run "
              "everything again (only folders fedsim made: a folder without fedsim's marker is refused, "
              "as is --out a run directory).")
@click.option("--dry-run", is_flag=True, help="List the runs and whether each is complete; run nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@plugin_option()
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
    plugin_entries: tuple[str, ...] = (),
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
        # a local sweep checks its data as `fedsim run` does, before anything is written; on a cluster
        # (--address) the data may be only there: each run checks it (fedsim.sweep_execute.run_one)
        plan = plan_sweep(
            scenario, grid, parse_sets(sets), out, skip_invalid, require_data=address is None, plugins=plugin_entries
        )
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
            more = f" (and {len(stale) - 1} more folder{'s' if len(stale) > 2 else ''})" if len(stale) > 1 else ""
            raise click.ClickException(  # one line, as every refusal: the first folder and how many more
                f"run folders hold a different scenario than this sweep would run: {stale[0]}{more}; "
                "pass --overwrite to rerun them, or choose another --out"
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
    except KeyboardInterrupt:  # one line on stderr and exit 130, as fedsim run's (fedsim.cli_errors)
        raise RunInterruptedError(
            f"interrupted; complete runs are kept; continue with the same command (→ {plan.out})"
        ) from None
    console.print(
        f"{res.total} run{'' if res.total == 1 else 's'} in {plan.out}: "
        f"{len(res.already_complete)} already complete, {len(res.ran)} ran"
        f"{f', [red]{len(res.failed)} failed[/red]' if res.failed else ''}"
        f"{f', {len(res.invalid)} invalid left out' if res.invalid else ''} ({time.time() - t0:.1f} s)"
    )
    if res.kept:
        console.print(f"sweep.json also lists {len(res.kept)} run(s) of an earlier grid of this sweep, which "
                      f"report and plot include (e.g. {res.kept[0]}); another --out keeps sweeps apart")
    if res.failed:
        for n, err in res.failed.items():
            console.print(f"  [red]{n}[/red]: {err}")
        console.print("fix the cause and run the same command again: only these runs will run")
        raise SystemExit(1)
    console.print(f"next: fedsim report {plan.out}   ·   fedsim plot {plan.out}")
