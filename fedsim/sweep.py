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
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import click
import yaml

from fedsim._runs import comparable, flatten, fmt_value
from fedsim.cli_errors import RUN_ERROR_FILE
from fedsim.errors import RunInterruptedError
from fedsim.scenario import (
    ScenarioError,
    grid_errors,
    parse,
    parse_sets,
    parse_value,
    plain_tree,
    read_yaml,
    set_dotted,
)
from fedsim.threads import free_cpus

_UNSAFE = re.compile(r"[^A-Za-z0-9._,+\-]")
MAX_NAME = 200


# --------------------------------------------------------------------------- grid parsing
def split_values(text: str) -> list[str]:
    """Split ``a,b,[1,2],{x: 1, y: 2}`` on the commas outside brackets and braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_grid(items: tuple[str, ...] | list[str]) -> dict[str, list[Any]]:
    """``("strategy.name=fedavg,krum", "seed=0,1")`` → ``{"strategy.name": ["fedavg", "krum"], "seed": [0, 1]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r}: expected KEY=V1,V2,..., e.g. strategy.name=fedavg,krum")
        key, vals = item.split("=", 1)
        values = [parse_value(v) for v in split_values(vals)]
        if not key.strip() or not values:
            raise ValueError(f"{item!r}: expected KEY=V1,V2,..., e.g. seed=0,1,2")
        grid[key.strip()] = values
    return grid


def grid_from_section(section: Any, prefix: str = "", source: str = "sweep") -> dict[str, list[Any]]:
    """A YAML ``sweep:`` mapping → grid; nested mappings become dotted keys, a scalar one value."""
    if not isinstance(section, dict):
        raise ValueError(f"{source}: must be a mapping of scenario keys to lists of values")
    grid: dict[str, list[Any]] = {}
    for k, v in section.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            grid.update(grid_from_section(v, key + ".", source))
        else:
            grid[key] = list(v) if isinstance(v, list) else [v]
            if not grid[key]:
                raise ValueError(f"{source}.{key}: empty list of values")
    return grid


def read_scenario_with_sweep(path: Path) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Read a scenario YAML; return (scenario mapping without ``sweep:``, the grid it declared)."""
    data = read_yaml(path) or {}  # bounded, safe, one-line errors (as fedsim run reads it)
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: the top level must be a mapping of sections")
    data = plain_tree(data, str(path))
    section = data.pop("sweep", None)
    try:
        grid = grid_from_section(section, source=f"{path}: sweep") if section is not None else {}
    except ValueError as e:
        raise ScenarioError(str(e)) from None
    return data, grid


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in product(*(grid[k] for k in keys))]


def _name_part(v: Any) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}-{_name_part(x)}" for k, x in sorted(v.items()))
    if isinstance(v, (list, tuple)):
        return ",".join(_name_part(x) for x in v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return _UNSAFE.sub("-", fmt_value(v))


def _digest(overrides: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(overrides: dict[str, Any]) -> str:
    """Folder name of a run: ``strategy.name=krum__peers.byzantine_fraction=0.3__seed=1``."""
    if not overrides:
        return "base"
    name = "__".join(f"{k}={_name_part(v)}" for k, v in overrides.items())
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9] + "~" + _digest(overrides)
    return name


# --------------------------------------------------------------------------- planning
@dataclass
class PlannedRun:
    name: str
    overrides: dict[str, Any]
    data: dict[str, Any]  # the full scenario mapping this run validates and executes
    dir: Path
    rounds: int = 0

    @property
    def complete(self) -> bool:
        return (self.dir / "summary.json").exists()


@dataclass
class SweepPlan:
    name: str
    out: Path
    grid: dict[str, list[Any]]
    base: dict[str, Any]
    runs: list[PlannedRun]
    invalid: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)
    source: str = ""

    def index(self) -> dict[str, Any]:
        from fedsim import __version__

        return {
            "name": self.name,
            "scenario": self.source,
            "fedsim": __version__,
            "grid": self.grid,
            "base": self.base,
            "runs": [{"dir": r.name, "overrides": r.overrides} for r in self.runs],
            "invalid": [{"dir": n, "overrides": o, "error": e} for n, o, e in self.invalid],
        }


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    return comparable(flatten(data))


def plan_sweep(
    scenario: Path,
    grid: dict[str, list[Any]] | None = None,
    sets: dict[str, Any] | None = None,
    out: Path | None = None,
    skip_invalid: bool = False,
) -> SweepPlan:
    """Expand ``scenario`` (its ``sweep:`` section, then ``grid`` on top) into validated runs.

    ``sets`` are fixed overrides for every run (not part of folder names). Raises
    :class:`ScenarioError` for an invalid combination unless ``skip_invalid`` (then it is listed
    in ``plan.invalid`` and not run). Unknown names and keys anywhere in the grid
    (:func:`fedsim.scenario.grid_errors`: ``strategy.name=bulyn``) raise whatever ``skip_invalid``
    says, before any combination is validated: ``skip_invalid`` leaves out only combinations of
    valid names that fail a constraint (Krum's n > 2f + 2, an attack with 0 Byzantine peers)."""
    base, file_grid = read_scenario_with_sweep(scenario)
    for k, v in (sets or {}).items():
        set_dotted(base, k, v)
    full_grid = dict(file_grid)
    full_grid.update(grid or {})
    typos = grid_errors(base, full_grid, str(scenario))
    if typos:  # a misspelt name or key is never a combination to skip
        raise ScenarioError("; ".join(typos), typos)
    name = str(base.get("name") or "run")
    out_dir = Path(out) if out else Path((base.get("output") or {}).get("dir", "runs")) / f"{name}-sweep"
    runs, invalid, seen = [], [], {}
    for ov in expand(full_grid):
        data = copy.deepcopy(base)
        for k, v in ov.items():
            set_dotted(data, k, v)
        set_dotted(data, "engine.backend", "local")
        data.setdefault("engine", {}).pop("address", None)
        rn = run_name(ov)
        try:
            sc = parse(copy.deepcopy(data), f"{scenario} [{rn}]")
        except ScenarioError as e:
            if not skip_invalid:
                hint = " (--skip-invalid leaves out combinations that cannot run)"
                raise ScenarioError(f"{e}{hint}", [*e.errors[:-1], e.errors[-1] + hint]) from None
            invalid.append((rn, ov, str(e)))
            continue
        if rn in seen:  # two overrides that read alike once made file-safe
            raise ScenarioError(f"runs {seen[rn]} and {ov} would share the folder {rn}; spell the values apart")
        seen[rn] = ov
        runs.append(PlannedRun(rn, ov, data, out_dir / rn, sc.rounds))
    return SweepPlan(name, out_dir, full_grid, base, runs, invalid, str(scenario))


def check_existing(plan: SweepPlan) -> list[str]:
    """Run folders whose recorded scenario differs from the planned one (would be reused wrongly)."""
    bad = []
    for r in plan.runs:
        p = r.dir / "scenario.yaml"
        if not p.exists():
            continue
        old = _comparable(yaml.safe_load(p.read_text()) or {})
        new = _comparable(parse(copy.deepcopy(r.data)).model_dump(mode="json"))
        diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if diff:
            k = diff[0]
            bad.append(f"{r.dir}: {k} was {old.get(k)!r}, now {new.get(k)!r}")
    return bad


# --------------------------------------------------------------------------- executing
def run_one(data: dict[str, Any], run_dir: str, progress: Callable[[int, dict], None] | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Execute one run into ``run_dir``; resume it from ``checkpoint.pt`` when there is one.
    ``threads``: the run's torch threads (its share of the CPUs, :mod:`fedsim.threads`; None:
    from its ``engine`` section, :func:`fedsim.runner.group_threads`).

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
