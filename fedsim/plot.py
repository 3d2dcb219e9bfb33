"""``fedsim plot``: figures of a run or a sweep, as PNG and PDF.

* ``accuracy_vs_round``: honest peers' test accuracy per round, one line per strategy (mean over
  honest peers, averaged over seeds) with the honest peers' min–max band (``--band seeds``: ± one
  std over the seeds); one panel per attack × Byzantine fraction when those vary.
* ``accuracy_vs_bytes``: the same accuracy against the cumulative bytes each peer sent.
* ``heatmap_strategy_x_attack`` / ``heatmap_strategy_x_<fraction key>``: final accuracy.
* ``probes_*``: cloning curves (agreement and clone accuracy vs queries) and unlearning
  curves/bars, for runs with a ``probes.json``.

Lines: ten distinct colours (the Okabe–Ito palette without its yellow, which is unreadable on
white, plus three of Paul Tol's), each line also with its own dash pattern and marker, so up to
ten lines stay apart in greyscale and for colour-blind readers; heatmaps use ``cividis``.
Titles name the sweep by its own folder (``--title``/``--no-title`` override), ``--size``
sets every figure's size in inches, ``--band seeds`` draws ± one std over the seeds instead of
the honest peers' min–max, ``--no-bands`` no band. The bytes axis says what a message of each
rule carries (the full model: backbone + head, or the head only).
matplotlib is imported only inside the functions that draw, so importing this module stays light.

This module is the entry point (:func:`plot_dir`, the ``fedsim plot`` command and its ``--size``
parsing); the figures are :mod:`fedsim.plot_curves`, :mod:`fedsim.plot_heatmaps` and
:mod:`fedsim.plot_probes`, their style :mod:`fedsim.plot_style` (every public name re-exported here).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import click

from fedsim._runs import PLOTS_DIR, left_out, load_runs
from fedsim.errors import FedsimError
from fedsim.plot_curves import bytes_label, plot_curves
from fedsim.plot_heatmaps import plot_heatmaps
from fedsim.plot_probes import (
    _num_or_none,
    plot_cloning,
    plot_probes,
    plot_unlearning,
    probe_records,
)
from fedsim.plot_style import (
    DEFAULT,
    EXCHANGES,
    LINESTYLES,
    MARKERS,
    OKABE_ITO,
    PALETTE,
    PANEL_H,
    PANEL_W,
    STYLE,
    PlotOptions,
    _context,
    _figure,
    _panel_title,
    _save,
    _style,
    _suptitle,
    _titles,
)

__all__ = [  # its own names and those of the plot_* modules it re-exports
    "DEFAULT",
    "EXCHANGES",
    "BANDS",
    "FORMATS",
    "LINESTYLES",
    "MARKERS",
    "MAX_INCHES",
    "OKABE_ITO",
    "PALETTE",
    "PANEL_H",
    "PANEL_W",
    "PlotOptions",
    "STYLE",
    "bytes_label",
    "parse_size",
    "plot",
    "plot_cloning",
    "plot_curves",
    "plot_dir",
    "plot_heatmaps",
    "plot_probes",
    "plot_unlearning",
    "probe_records",
    "_context",
    "_figure",
    "_num_or_none",
    "_panel_title",
    "_save",
    "_style",
    "_suptitle",
    "_titles",
]


# --------------------------------------------------------------------------- entry points
def plot_dir(
    directory: Path,
    out: Path | None = None,
    formats: Iterable[str] = ("png", "pdf"),
    log=print,
    opts: PlotOptions = DEFAULT,
) -> list[Path]:
    """Every figure for the run or sweep in ``directory``; returns the files written.

    Figures go to ``out`` (default ``directory/plots``); ``opts``: title, size, bands."""
    import matplotlib

    rs = load_runs(directory)
    if out is None and (Path(directory) / PLOTS_DIR).is_symlink():  # planted in a folder someone sent
        raise FedsimError(f"{Path(directory) / PLOTS_DIR} is a symbolic link; fedsim plot writes figures only into "
                          "a real folder: remove the link, or choose a folder with --out")
    missing = left_out(rs)
    if missing:  # (plot_curves: a line draws its incomplete runs only when it has no complete one)
        log(f"note: {missing}; in no heatmap, and in a curve only where no complete run has its settings")
    out = Path(out) if out else Path(directory) / PLOTS_DIR
    formats = [f.lower().lstrip(".") for f in formats]
    written: list[Path] = []
    with matplotlib.rc_context(STYLE):
        if any(r.evaluations for r in rs.runs):
            written += plot_curves(rs, out, formats, "round", opts)
            written += plot_curves(rs, out, formats, "bytes", opts)
        written += plot_heatmaps(rs, out, formats, opts)
        written += plot_probes(rs, out, formats, log, opts)
    return written


FORMATS = ("png", "pdf", "svg", "eps", "jpg")
BANDS = ("peers", "seeds")  # PlotOptions.band
MAX_INCHES = 50.0


def parse_size(text: str) -> tuple[float, float]:
    """``"3.5,2.4"`` → ``(3.5, 2.4)`` inches; anything else is a ``click.BadParameter`` saying the form."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    try:
        w, h = (float(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected W,H in inches, e.g. 3.5,2.4", param_hint="--size") from None
    if not (0 < w <= MAX_INCHES and 0 < h <= MAX_INCHES):
        raise click.BadParameter(f"{text!r}: width and height must be > 0 and <= {MAX_INCHES:g} inches",
                                 param_hint="--size")
    return w, h


@click.command(short_help="Figures (PNG/PDF) of a run or sweep: accuracy curves, heatmaps, probes.")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Folder for the figures [DIRECTORY/plots]."
)
@click.option(
    "--format",
    "formats",
    default="png,pdf",
    show_default=True,
    help=f"Comma-separated file formats: {', '.join(FORMATS)}.",
)
@click.option("--title", metavar="TEXT", help="First title line of every figure [the sweep's or run's name: what].")
@click.option("--no-title", is_flag=True, help="No title at all (for a paper whose caption says it).")
@click.option("--size", metavar="W,H", help="Every figure's width and height in inches, e.g. 3.5,2.4 [from panels].")
@click.option("--no-bands", is_flag=True, help="No band around the accuracy lines.")
@click.option("--band", type=click.Choice(BANDS), default="peers", show_default=True,
              help="The band around each accuracy line: the honest peers' min–max (averaged over seeds), or "
              "± 1 sample std of the seeds' means (a paper's error band; none for one seed).")
def plot(
    directory: Path, out: Path | None, formats: str, title: str | None, no_title: bool, size: str | None,
    no_bands: bool, band: str = "peers"
) -> None:
    """Figures of DIRECTORY (a run, or a sweep from `fedsim sweep`):

    \b
      accuracy_vs_round   honest accuracy per round, a line per strategy (mean, min–max band),
                          a panel per attack × Byzantine fraction
      accuracy_vs_bytes   the same against cumulative bytes sent per peer
      heatmap_*           final accuracy, strategy × attack and strategy × Byzantine fraction
      probes_*            cloning / unlearning curves of runs with a probes.json

    \b
    Examples:
      fedsim plot runs/quickstart
      fedsim plot runs/quickstart-sweep --out figures --format pdf
      fedsim plot runs/quickstart-sweep --format png,svg
      fedsim plot runs/attack-matrix --format pdf --no-title --size 7,8 --no-bands   # 5 panels: a page wide
      fedsim plot runs/quickstart-sweep --format pdf --no-title --size 7,4.5 --band seeds
    """
    fmts = [f.strip().lower().lstrip(".") for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise click.BadParameter(
            f"{', '.join(bad) or formats!r}: choose from {', '.join(FORMATS)}", param_hint="--format"
        )
    if title is not None and no_title:
        raise click.UsageError("give --title TEXT or --no-title, not both")
    opts = PlotOptions(title=title, show_title=not no_title, size=parse_size(size) if size else None,
                       bands=not no_bands, band=band)
    try:
        written = plot_dir(directory, out, fmts, log=lambda m: click.echo(m, err=True), opts=opts)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if not written:
        raise click.ClickException(f"{directory}: nothing to plot yet (no evaluation rounds in metrics.jsonl)")
    for p in written:
        click.echo(str(p))
