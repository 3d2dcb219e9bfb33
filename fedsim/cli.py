"""The ``fedsim`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from fedsim.cli_errors import FedsimGroup, remember_run_dir
from fedsim.cli_plugin import plugin_option
from fedsim.errors import RunInterruptedError
from fedsim.units import human_bytes
from fedsim.version import __version__

# commands that live in their own modules, imported only when named (so `fedsim list` and
# `fedsim --help` import no torch, Ray or matplotlib)
LAZY_COMMANDS = {
    "sweep": "fedsim.sweep:sweep",
    "plot": "fedsim.plot:plot",
    "report": "fedsim.report:report",
    "flower": "fedsim.flower.cli:flower",
}


def _console():
    from rich.console import Console

    return Console(stderr=False)


@click.group(
    cls=FedsimGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
# the version of the code that runs, not a metadata lookup (the distribution is fedsim-lab, not fedsim)
@click.version_option(version=__version__, prog_name="fedsim")
def main() -> None:
    """fedsim: simulate federated and decentralized learning under Byzantine attack.

    Peers share a frozen, pretrained backbone and train only their output layer (the Bristle
    setting), so a round of hundreds of peers takes milliseconds.

    \b
    Start here:
      fedsim run scenarios/quickstart.yaml      run a scenario (writes runs/<name>/)
      fedsim validate scenarios/*.yaml          check scenario files without running
      fedsim list                               datasets, backbones, partitions, topologies,
                                                strategies, attacks and probes you can name
    """


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Continue the run in this directory from its last checkpoint (scenario taken from it).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing run directory of the same name.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario field, e.g. --set strategy.name=median --set peers.byzantine_fraction=0.3 "
    "--set peers.attack.name=alie (a number indexes a list: --set probes.0.method=newton).",
)
@click.option("--address", help="Ray cluster to run on: 'auto' or ray://HOST:10001 (sets engine.address).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: <output.dir>/<name>).",
)
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar or progress lines; print only warnings (stderr), the summary."
)
@plugin_option()
def run(
    scenario: Path | None,
    resume_dir: Path | None,
    overwrite: bool,
    sets: tuple[str, ...],
    address: str | None,
    out_dir: Path | None,
    quiet: bool,
    plugin_entries: tuple[str, ...] = (),
) -> None:
    """Run SCENARIO (a YAML file) and write runs/<name>/: scenario.yaml (resolved), versions.json,
    metrics.jsonl (one JSON object per round), timings.jsonl, checkpoint.pt (with
    checkpoint.every), summary.json, probes.json (with probes:); print a summary table.

    \b
    Examples:
      fedsim run scenarios/quickstart.yaml
      fedsim run scenarios/quickstart.yaml --set strategy.name=median --set rounds=10 --overwrite
      fedsim run --resume runs/quickstart          # after a kill or Ctrl-C
      fedsim run scenarios/quickstart.yaml --address auto   # on a running Ray cluster
      fedsim run my_scenario.yaml --plugin my_plugins.py     # your own rule/attack/backbone/probe
      fedsim run --resume runs/mine --plugin my_plugins.py   # a run made with a plugin
    """
    from fedsim import scenario as sc_mod
    from fedsim.errors import FedsimError
    from fedsim.runner import Run

    overrides = sc_mod.parse_sets(sets)
    if address:
        overrides["engine.address"] = address
    if resume_dir is not None:
        # a resume continues the recorded scenario: only where it runs may change (not what it computes)
        changed = [k for k in overrides if not k.startswith("engine.")]
        if changed:
            raise click.ClickException(
                f"--set {changed[0]} cannot change a run being resumed (only engine.* and --address can); "
                "start a new run with another name instead"
            )
        extra = [o for o, v in (("SCENARIO", scenario), ("--overwrite", overwrite), ("--out", out_dir)) if v]
        if extra:
            raise click.ClickException(f"--resume takes the scenario and folder from RUN_DIR; drop {extra[0]}")
    try:
        if resume_dir is not None:
            from fedsim.rundirectory import load_for_resume

            sc = load_for_resume(resume_dir, overrides, plugin_entries)
            r = Run(sc, resume_dir, fetch_final_params=False)  # nothing here reads the heads
            r.open_for_resume()  # checks (and locks) before any work: a mismatch is one line, nothing runs
        elif scenario is None:
            raise click.UsageError("give a SCENARIO file or --resume RUN_DIR")
        else:
            # the data must be here before create_dir makes (or --overwrite empties) the run's folder
            sc = sc_mod.load(scenario, overrides, require_data=True, plugins=plugin_entries)
            r = Run(sc, out_dir, fetch_final_params=False)
            r.create_dir(overwrite=overwrite)
    except (FedsimError, OSError) as e:
        raise click.ClickException(str(e)) from None
    console = _console()
    t0 = time.time()
    summary = _execute(r, console, quiet, resume=resume_dir is not None)
    if summary is None:
        return
    summary["wall_seconds"] = round(time.time() - t0, 2)
    _summary_table(console, summary, r.dir, resumed=resume_dir is not None)
    if summary.get("probes") and (r.dir / "probes.json").exists():
        import json

        from fedsim.report_probes import format_probes

        click.echo(format_probes(json.loads((r.dir / "probes.json").read_text())))


def _execute(r, console, quiet: bool, resume: bool) -> dict | None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fedsim.rundirectory import resume_command

    sc = r.sc
    remember_run_dir(r.dir, resume_command(r.dir, sc.plugins))
    if quiet:
        return _guarded(r, console, None, resume, log=_run_log(None))
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[acc]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(sc.name, total=sc.rounds, acc="")

        def progress(i: int, rec: dict) -> None:
            acc = f"honest acc {rec['accuracy_mean']:.3f}" if "accuracy_mean" in rec else ""
            bar.update(task, completed=i + 1, **({"acc": acc} if acc else {}))

        return _guarded(r, console, progress, resume, log=_run_log(bar.console.log))


def _run_log(progress_log):
    """The ``log`` a run is given: its ``warning: ...`` lines (``fedsim.prepare``: more CPUs than the
    machine has, a batch above every shard, hours of local steps) to stderr as one unwrapped line
    always, as Ray's and oneMKL's ``warnings`` are; its progress lines (a feature cache computed, a
    domain's peers) to ``progress_log``, or nowhere with ``-q`` (``progress_log`` None)."""

    def log(m: str) -> None:
        if m.startswith("warning: "):
            click.echo(m, err=True)
        elif progress_log is not None:
            progress_log(m)

    return log


def _guarded(r, console, progress, resume: bool, log=None) -> dict | None:
    """Execute ``r``. Ctrl-C (handled by the run after its round, or arriving before the run took
    over SIGINT) ends in one line naming the resume command and exit 130; an actor that died
    stops the run with the same line and exit 1. The group (:class:`FedsimGroup`) prints them."""
    try:
        return r.execute(progress=progress, log=log or (lambda m: None), resume=resume)
    except KeyboardInterrupt:
        from fedsim.rundirectory import resume_command

        where = "its last checkpoint" if (r.dir / "checkpoint.pt").exists() else "round 0 (no checkpoint yet)"
        raise RunInterruptedError(
            f"interrupted; the run can continue from {where}: {resume_command(r.dir, r.sc.plugins)}"
        ) from None
    except RunInterruptedError as e:
        if not getattr(r, "interrupted", False):  # not Ctrl-C: a peer actor died
            e.exit_code = 1
        raise


def _summary_table(console, s: dict, run_dir: Path, resumed: bool = False) -> None:
    """The run's summary. After a resume the rounds' time covers every session and the wall time
    only this command, so the rows say so (else 5 s in rounds beside 3 s of wall time reads wrong)."""
    from rich.table import Table

    t = Table(title=f"fedsim run '{s['name']}' — {run_dir}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [
        ("mode", s["mode"]),
        ("strategy", s["strategy"]),
        ("attack", s["attack"]),
        ("peers (Byzantine)", f"{s['peers']} ({s['byzantine']})"),
        ("rounds", s["rounds"]),
        ("final honest accuracy: mean", _pct(s["final_accuracy_mean"])),
        ("final honest accuracy: min / max", f"{_pct(s['final_accuracy_min'])} / {_pct(s['final_accuracy_max'])}"),
        ("bytes sent (all peers, all rounds)", human_bytes(s["bytes_sent_total"])),
        ("time in rounds" + (" (all sessions)" if resumed else ""), f"{s['wall_seconds_rounds']:.2f} s"),
        ("wall time" + (" (this command)" if resumed else ""), f"{s.get('wall_seconds', 0):.2f} s"),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only 'ok', warnings and errors, not the plan.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario field in every file, as `fedsim run --set` does "
    "(e.g. --set strategy.name=krum --set strategy.f=1).",
)
@plugin_option(
    "Your own rule, attack, backbone or probe (a .py file or a module; repeatable) that the "
    "FILES name; a file that lists a plugin not given here is refused (docs/extending.md)."
)
def validate(
    files: tuple[Path, ...], quiet: bool, sets: tuple[str, ...] = (), plugin_entries: tuple[str, ...] = ()
) -> None:
    """Check scenario FILES without running them, by the code a run uses: every field (strict
    types, finite numbers), names of datasets, strategies and attacks, the dataset's files, the
    partition against the data, the memory the run needs against this machine's, the topology
    built as the run builds it, and each rule's limits (e.g. Krum's n > 2f + 2) for its real
    in-degree.

    A `sweep:` section is checked too: every value of every axis (a misspelt name such as
    strategy.name=bulyn is an error naming the axis and the value), and each combination is
    validated; those that fail a constraint are 'warning: ...' lines (`fedsim sweep
    --skip-invalid` leaves them out).

    Prints 'ok' per valid file, then the run's plan as validation built it (peers, honest and
    Byzantine; topology, in-degrees and f; the rule's effective parameters; the partition's
    largest shard; bytes per message and per round; the peak memory estimate; the local steps'
    work), unless --quiet; 'warning: ...' lines for what it would ask of this machine (more CPUs
    than it has, a batch above every shard, local steps above 1e13 FLOP). Exits 1, printing one
    line per error, each naming its file and field; 0 when every file is valid."""
    from fedsim import scenario as sc_mod
    from fedsim.scenario import ScenarioError

    overrides = sc_mod.parse_sets(sets)
    bad = 0
    for f in files:
        errors: list[str] = []
        sc = plan = None
        try:
            sc, plan = sc_mod.load_with_plan(f, overrides, require_data=True, plugins=plugin_entries)
        except ScenarioError as e:
            errors += e.errors
        found = [] if sc is None or plan is None else sc_mod.resource_warnings(sc, plan.largest_shard, plan.work)
        warnings = [f"{f}: warning: {w}" for w in found]
        try:
            grid_errors, grid_warnings = _validate_sweep(f, overrides, plugin_entries)
        except ScenarioError as e:  # an unreadable file: load() said so already
            grid_errors, grid_warnings = ([] if errors else e.errors), []
        errors += [e for e in grid_errors if e not in errors]
        for line in errors:
            click.echo(line, err=True)
        for line in warnings + (grid_warnings if not errors else []):
            click.echo(line, err=True)
        if errors:
            bad += 1
        else:
            click.echo(f"{f}: ok")
            if not quiet and sc is not None and plan is not None:
                for line in sc_mod.plan_lines(sc, plan):
                    click.echo(line)
    if bad:
        sys.exit(1)


MAX_SWEEP_WARNINGS = 10


def _validate_sweep(
    path: Path, overrides: dict | None = None, plugin_entries: tuple[str, ...] = ()
) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of the ``sweep:`` section of ``path``: its typos
    (:func:`fedsim.scenario.grid_errors`), then, when there are none, one warning per combination
    that fails a constraint (at most :data:`MAX_SWEEP_WARNINGS` and a count)."""
    from fedsim.scenario import ScenarioError, check_plugins_granted, grid_errors, set_dotted, with_plugins
    from fedsim.sweep_plan import plan_sweep, read_scenario_with_sweep

    base, grid = read_scenario_with_sweep(path)
    if not grid:
        return [], []
    for key, value in (overrides or {}).items():
        set_dotted(base, key, value)
    base = with_plugins(base, plugin_entries, str(path))
    try:
        check_plugins_granted(base, str(path))
    except ScenarioError as e:
        return e.errors, []
    errors = grid_errors(base, grid, str(path))
    if errors:
        return errors, []
    try:
        plan = plan_sweep(path, sets=overrides, skip_invalid=True, plugins=plugin_entries)
    except ScenarioError as e:
        return e.errors, []
    total = len(plan.runs) + len(plan.invalid)
    warnings = [f"{path}: warning: sweep combination {n} cannot run ({len(plan.invalid)} of {total} left out by "
                f"--skip-invalid): {err.split(': ', 2)[-1]}" for n, _, err in plan.invalid[:MAX_SWEEP_WARNINGS]]
    if len(plan.invalid) > MAX_SWEEP_WARNINGS:
        warnings.append(f"{path}: warning: ... and {len(plan.invalid) - MAX_SWEEP_WARNINGS} more such combinations")
    if not plan.runs:
        return [f"{path}: sweep: no combination of the grid can run"] + warnings, []
    return [], warnings


def _load_plugins(entries: tuple[str, ...]) -> None:
    """Import ``--plugin`` entries as a scenario's ``plugins:`` would; a bad one is a usage error."""
    if not entries:
        return
    from fedsim import plugins

    try:
        plugins.load(plugins.grant(entries))
    except ValueError as e:  # PluginError, or an entry that is neither a file nor a module name
        raise click.BadParameter(str(e), param_hint="--plugin") from None


@main.command(name="list", short_help="What a scenario can name; one component's docs and parameters.")
@click.argument("kind", required=False, metavar="[KIND]")
@click.argument("name", required=False)
@plugin_option("Also list what this plugin registers (a .py file or a module, as run's --plugin; repeatable).")
def list_(kind: str | None, name: str | None, plugin_entries: tuple[str, ...]) -> None:
    """List what a scenario can name: all kinds, one KIND (datasets, backbones, partitions,
    topologies, strategies, attacks, probes; `rules` is strategies), or one component in detail:
    its documentation and each parameter with its type, default and what it accepts. A
    component's name alone (`fedsim list krum`) shows it, whatever its kind.

    \b
    Examples:
      fedsim list
      fedsim list strategies
      fedsim list strategies krum
      fedsim list krum
      fedsim list attacks alie
      fedsim list partitions dirichlet
      fedsim list probes unlearning
      fedsim list strategies my_rule --plugin my_rules.py
    """
    from fedsim import catalog

    _load_plugins(plugin_entries)
    if kind and name is None and not catalog.is_kind(kind):  # `fedsim list krum`: a component's name
        for i, k in enumerate(catalog.kinds_naming(kind)):
            if i:
                click.echo("")
            _describe(catalog, k, kind, plugin_entries)
        return
    kinds = [catalog.resolve_kind(kind)] if kind else list(catalog.KINDS)
    if name is not None:
        _describe(catalog, kinds[0], name, plugin_entries)
        return
    for k in kinds:
        click.secho(f"{k}:", bold=True)
        for n, v in catalog.summaries(k).items():
            v = " ".join(v.split())
            click.echo(f"  {n:<24} {v if len(v) <= 110 else v[:109] + '…'}")


def _describe(catalog, kind: str, name: str, plugin_entries: tuple[str, ...] = ()) -> None:
    """One component's documentation and parameters (``fedsim list KIND NAME``)."""
    text, params = catalog.describe(kind, name, plugin_entries)
    click.secho(f"{name} ({catalog._SINGULAR[catalog.resolve_kind(kind)]})", bold=True)
    click.echo(text)
    if params:
        click.echo("")
        catalog.format_params(params, click.echo)


@main.command()
@click.option(
    "--backbone", default="fmnist_cnn", show_default=True, help="Backbone to pretrain (see `fedsim list backbones`)."
)
@click.option("--dataset", default=None, help="Source dataset (default: the backbone's, e.g. fashion_mnist_embedded).")
@click.option("--data-dir", default=None, help="Directory of the source dataset's files (non-embedded datasets).")
@click.option("--epochs", default=3, show_default=True, help="Passes over the source training set (>= 1).")
@click.option("--lr", default=1e-3, show_default=True, help="Adam's learning rate (> 0).")
@click.option("--batch-size", default=128, show_default=True, help="Minibatch size (>= 1).")
@click.option("--seed", default=0, show_default=True, help="Seeds the initial weights and the minibatch order.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Weights file (default: a shipped backbone's shipped file, which this then replaces; else "
    "$FEDSIM_WEIGHTS_DIR, by default ~/.cache/fedsim/weights).",
)
@plugin_option("Import this plugin first, so --backbone may name a backbone it registers (docs/extending.md).")
def pretrain(
    backbone: str,
    dataset: str | None,
    data_dir: str | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    out: Path | None,
    plugin_entries: tuple[str, ...] = (),
) -> None:
    """Pretrain a backbone on its source dataset and save its frozen weights (seeded).

    The shipped fmnist_cnn weights were made by `fedsim pretrain` with the defaults (about 100 s
    on 2 CPU cores). A plugin's backbone: `fedsim pretrain --plugin my_plugins.py --backbone NAME
    --dataset DATASET` writes ~/.cache/fedsim/weights/NAME.pt ($FEDSIM_WEIGHTS_DIR), where runs
    read it."""
    from fedsim.models.pretrain import pretrain as run_pretrain

    _load_plugins(plugin_entries)

    try:
        run_pretrain(backbone, dataset, data_dir, epochs, lr, batch_size, seed, out, log=click.echo)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
