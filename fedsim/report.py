"""``fedsim report``: a Markdown (or CSV) table of a run or a sweep.

One row per configuration (the runs' varying scenario keys, seeds pooled): final mean honest
accuracy (mean ± sample std over seeds), rounds to a target accuracy, and bytes sent. Every
number comes from the runs' ``metrics.jsonl``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from fedsim._runs import (
    RunData,
    RunSet,
    fmt_value,
    group_runs,
    label,
    left_out,
    load_runs,
    mean_std,
    read_json,
    shared_settings,
)
from fedsim.errors import CorruptFileError
from fedsim.units import human_bytes


@dataclass
class Row:
    """One configuration's numbers (accuracies are fractions in [0, 1])."""

    config: dict[str, Any]
    runs: list[RunData]
    accuracy_mean: float | None
    accuracy_std: float | None
    rounds_to_target: list[int | None]
    bytes_per_peer: float
    bytes_total: float

    @property
    def reached(self) -> list[int]:
        return [r for r in self.rounds_to_target if r is not None]


def summarize(
    rs: RunSet, target: float = 0.9, by: list[str] | None = None
) -> tuple[list[str], list[Row], list[RunData]]:
    """Group the complete runs of ``rs`` by ``by`` (default: every varying key but the seed).

    Returns (the grouping keys, one :class:`Row` per group, the incomplete runs left out)."""
    complete = [r for r in rs.runs if r.complete]
    incomplete = [r for r in rs.runs if not r.complete]
    done = RunSet(rs.root, complete, rs.index)
    keys = by if by is not None else done.varying_keys()
    if not keys:
        keys = ["strategy.name"]
    rows = []
    for values, runs in group_runs(done, keys) if complete else []:
        finals = [r.final_accuracy for r in runs if r.final_accuracy is not None]
        m, s = mean_std(finals) if finals else (None, None)
        rows.append(
            Row(
                dict(zip(keys, values, strict=True)),
                runs,
                m,
                s,
                [r.rounds_to(target) for r in runs],
                sum(r.bytes_per_peer() for r in runs) / len(runs),
                sum(r.bytes_total() for r in runs) / len(runs),
            )
        )
    return keys, rows, incomplete


def _num(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def fmt_accuracy(row: Row) -> str:
    """``93.56 ± 0.12`` (percent; no ± for one seed)."""
    if row.accuracy_mean is None:
        return "—"
    out = f"{100 * row.accuracy_mean:.2f}"
    return out if row.accuracy_std is None else f"{out} ± {100 * row.accuracy_std:.2f}"


def fmt_rounds(row: Row) -> str:
    """``12`` / ``12.3 ± 1.5`` when every seed reached the target; ``15 (2/3)`` when some did."""
    hit, n = row.reached, len(row.rounds_to_target)
    if not hit:
        return "not reached"
    m, s = mean_std([float(x) for x in hit])
    out = _num(m) if s is None or s == 0 else f"{m:.1f} ± {s:.1f}"
    return out if len(hit) == n else f"{out} ({len(hit)}/{n})"


def _target_pct(target: float) -> str:
    return f"{100 * target:g}%"


def _context(rs: RunSet, keys: list[str]) -> str:
    return ", ".join(shared_settings(rs, keys, rounds=True))


def _cell(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(rs: RunSet, keys: list[str], rows: list[Row], incomplete: list[RunData], target: float) -> str:
    """The report as Markdown: a title, the shared settings, the table, and what each column means."""
    head = [label(k) for k in keys] + [
        "runs",
        "final accuracy (%)",
        f"rounds to {_target_pct(target)}",
        "bytes sent / peer",
        "bytes sent (all peers)",
    ]
    align = ["---"] * len(keys) + ["---:"] * 5
    lines = [f"## fedsim report: {rs.title}", ""]
    ctx = _context(rs, keys)
    if ctx:
        lines += [ctx, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = [fmt_value(row.config[k]) for k in keys] + [
            str(len(row.runs)),
            fmt_accuracy(row),
            fmt_rounds(row),
            human_bytes(row.bytes_per_peer),
            human_bytes(row.bytes_total),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines += [
        "",
        "Final accuracy: mean test accuracy of the honest peers at the last evaluation; mean ± sample "
        "standard deviation over the runs (seeds). "
        f"Rounds to {_target_pct(target)}: first round (counting from 1) whose mean honest accuracy "
        f"is ≥ {_target_pct(target)}, averaged over the runs that reached it ((k/n): k of n runs did). "
        "Bytes: sent over all rounds, mean over runs (KiB = 1024 B).",
    ]
    every = sorted({int(r.get("evaluation.every", 1)) for row in rows for r in row.runs})
    if every and every[-1] > 1:
        lines[-1] += (f" Accuracy is evaluated every {' / '.join(map(str, every))} rounds (and at the last), so a "
                      f"rounds-to-{_target_pct(target)} value may be up to {every[-1] - 1} "
                      f"round{'s' if every[-1] > 2 else ''} late.")
    missing = left_out(rs)
    if missing:
        lines += ["", f"Left out of the table: {missing}"]
    return "\n".join(lines) + "\n"


def to_csv(keys: list[str], rows: list[Row], target: float) -> str:
    """The same numbers, unrounded, one row per configuration (for pandas / LaTeX tables)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        keys
        + [
            "runs",
            "final_accuracy_mean",
            "final_accuracy_std",
            "rounds_to_target_mean",
            "runs_reaching_target",
            "bytes_sent_per_peer",
            "bytes_sent_total",
            "target",
        ]
    )
    for row in rows:
        hit = row.reached
        w.writerow(
            [fmt_value(row.config[k]) for k in keys]
            + [
                len(row.runs),
                "" if row.accuracy_mean is None else row.accuracy_mean,
                "" if row.accuracy_std is None else row.accuracy_std,
                sum(hit) / len(hit) if hit else "",
                len(hit),
                row.bytes_per_peer,
                row.bytes_total,
                target,
            ]
        )
    return buf.getvalue()


def unknown_keys(rs: RunSet, keys: tuple[str, ...] | list[str]) -> str | None:
    """One line naming the first of ``keys`` that no run's scenario has (a typo grouped every run
    under a 'None' row before), with the closest key; None when all are known."""
    from fedlib.registry import did_you_mean

    known = {k for r in rs.runs for k in r.flat}
    known |= {k.rsplit(".", i)[0] for k in list(known) for i in range(1, k.count(".") + 1)}  # sections
    for k in keys:
        if k not in known:
            return f"{k!r}: no run's scenario has this key{did_you_mean(k, known)}"
    return None


@click.command(short_help="Markdown table of a run or sweep: accuracy, rounds to target, bytes.")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--target",
    default=0.9,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True, max=100),
    help="Target mean honest accuracy for 'rounds to target' (a fraction, or a percentage if > 1).",
)
@click.option(
    "--by",
    multiple=True,
    metavar="KEY",
    help="Group rows by these scenario keys (repeatable; default: every key that varies except seed).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["markdown", "csv"]),
    default="markdown",
    show_default=True,
    help="Markdown table, or CSV with unrounded numbers.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to this file (default: stdout).")
def report(directory: Path, target: float, by: tuple[str, ...], fmt: str, out: Path | None) -> None:
    """Table of DIRECTORY (a run or a sweep from `fedsim sweep`): final accuracy (mean ± std over
    seeds), rounds to --target accuracy, and bytes sent, one row per configuration.

    \b
    Examples:
      fedsim report runs/quickstart-sweep                   Markdown to stdout
      fedsim report runs/quickstart-sweep --target 0.8 --out results.md
      fedsim report runs/quickstart-sweep --by strategy.name --by peers.attack.name
      fedsim report runs/quickstart-sweep --format csv > results.csv   (unrounded numbers)

    Only complete runs (with summary.json) are counted; the table says how many were left out.
    In Markdown, each complete run's probes (its probes.json) follow the table, as `fedsim run`
    prints them.
    """
    if target > 1:
        target /= 100
    try:
        rs = load_runs(directory)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    unknown = unknown_keys(rs, by)
    if unknown:
        raise click.BadParameter(unknown, param_hint="--by")
    keys, rows, incomplete = summarize(rs, target, list(by) or None)
    if not rows:
        raise click.ClickException(f"{directory}: no complete run (with summary.json) yet; {left_out(rs)}")
    text = to_markdown(rs, keys, rows, incomplete, target) if fmt == "markdown" else to_csv(keys, rows, target)
    if fmt == "markdown":
        text += probes_markdown(rs)
    elif left_out(rs):  # the CSV holds only numbers: what it leaves out goes to stderr
        click.echo(f"fedsim report: left out: {left_out(rs)}", err=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


# --------------------------------------------------------------------------- probes.json as Markdown
def probes_markdown(rs: RunSet) -> str:
    """Each complete run's ``probes.json`` as Markdown (:func:`fedsim.report_probes.format_probes`,
    what ``fedsim run`` prints after the rounds) under a heading naming the run; ``""`` when no run
    has probes. An unreadable file, or one not shaped as ``docs/probes.md`` documents
    (:class:`fedsim.report_probes.ProbesShapeError`), is a line saying so and why, not a failed report."""
    from fedsim.report_probes import ProbesShapeError, format_probes

    parts = []
    for r in rs.runs:
        path = r.path / "probes.json"
        if not (r.complete and path.exists()):
            continue
        try:
            body = format_probes(read_json(path))
        except ProbesShapeError as e:
            body = f"{path}: cannot read: {e}\n"
        except CorruptFileError as e:  # names the file
            body = f"{e}\n"
        except (OSError, ValueError) as e:
            body = f"{path}: cannot read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})\n"
        if body:
            parts.append(f"\n## Probes: run {r.name}\n\n{body}")
    return "".join(parts)
