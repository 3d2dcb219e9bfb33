"""``fedsim plot``: figures of a run or a sweep, as PNG and PDF.

* ``accuracy_vs_round``: honest peers' test accuracy per round, one line per strategy (mean over
  honest peers, averaged over seeds) with the honest peers' min–max band; one panel per attack ×
  Byzantine fraction when those vary.
* ``accuracy_vs_bytes``: the same accuracy against the cumulative bytes each peer sent.
* ``heatmap_strategy_x_attack`` / ``heatmap_strategy_x_<fraction key>``: final accuracy.
* ``probes_*``: cloning curves (agreement and clone accuracy vs queries) and unlearning
  curves/bars, for runs with a ``probes.json``.

Lines: ten distinct colours (the Okabe–Ito palette without its yellow, which is unreadable on
white, plus three of Paul Tol's), each line also with its own dash pattern and marker, so up to
ten lines stay apart in greyscale and for colour-blind readers; heatmaps use ``cividis``.
Titles name the sweep by its own folder (``--title``/``--no-title`` override), ``--size``
sets every figure's size in inches, ``--no-bands`` drops the min–max bands. The bytes axis
says what a message of each rule carries (the full model: backbone + head, or the head only).
matplotlib is imported only inside the functions that draw, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from fedsim._runs import (
    ATTACK,
    FRACTIONS,
    STRATEGY,
    RunData,
    RunSet,
    fmt_value,
    group_runs,
    label,
    load_runs,
    mean_std,
)
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

__all__ = [  # its own names and those of fedsim.plot_style / fedsim.plot_probes it re-exports
    "DEFAULT",
    "EXCHANGES",
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


# --------------------------------------------------------------------------- helpers
def _exchanges(run: RunData) -> str | None:
    """What a message of ``run``'s rule carries (``full_model`` | ``output_layer``): from its
    summary, else from the rule's class (runs made before the summary recorded it)."""
    if run.summary and run.summary.get("exchanges"):
        return str(run.summary["exchanges"])
    try:
        import strategies

        return strategies.REGISTRY[str(run.get(STRATEGY))].exchanges
    except (ImportError, KeyError):
        return None


def bytes_label(runs: list[RunData], line: str | None, unit: str) -> str:
    """The bytes axis's label: ``bytes sent per peer, cumulative (MiB)`` over what each rule's
    messages carry: ``messages: full model (backbone + head)`` or, when the rules differ,
    ``messages: fedavg, krum: full model (backbone + head) · bristle: head only (output layer)``."""
    by: dict[str, list[str]] = {}
    for r in runs:
        what = EXCHANGES.get(_exchanges(r) or "", "unknown")
        name = fmt_value(r.get(line) if line else r.get(STRATEGY))
        if name not in by.setdefault(what, []):
            by[what].append(name)
    head = f"bytes sent per peer, cumulative ({unit})"
    if len(by) == 1:
        return f"{head}\nmessages: {next(iter(by))}"
    return f"{head}\nmessages: " + " · ".join(f"{', '.join(names)}: {what}" for what, names in by.items())



def _facets(rs: RunSet) -> tuple[str | None, str | None, str | None, list[str]]:
    """(line key, panel-row key, panel-column key, keys that split figures) from what varies."""
    keys = rs.varying_keys()
    line = STRATEGY if STRATEGY in keys else (keys[0] if keys else None)
    rest = [k for k in keys if k != line]
    row = ATTACK if ATTACK in rest else None
    col = next((k for k in FRACTIONS if k in rest), None)
    split = [k for k in rest if k not in (row, col)]
    return line, row, col, split


def _suffix(values: dict[str, Any]) -> str:
    from fedsim.sweep import run_name

    return "" if not values else "__" + run_name(values)


def _pick(runs: list[RunData]) -> list[RunData]:
    """The complete runs of a group if any, else all (a run still going)."""
    done = [r for r in runs if r.complete]
    return done or runs


def _curve(runs: list[RunData], field: str) -> tuple[list[int], list[float]]:
    """(rounds counted from 1, mean over runs of ``field``) at rounds every run evaluated."""
    per = [{int(m["round"]): m[field] for m in r.evaluations if field in m} for r in runs]
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return [x + 1 for x in common], [sum(p[x] for p in per) / len(per) for x in common]


def _cum_bytes(runs: list[RunData]) -> dict[int, float]:
    """Round → cumulative bytes sent per peer through that round (mean over runs)."""
    out: dict[int, list[float]] = {}
    for r in runs:
        tot = 0.0
        for m in r.metrics:
            tot += m.get("bytes_sent_per_peer", 0)
            out.setdefault(int(m["round"]), []).append(tot)
    return {k: sum(v) / len(v) for k, v in out.items()}


def _byte_unit(n: float) -> tuple[float, str]:
    for i, unit in enumerate(("B", "KiB", "MiB", "GiB", "TiB")):
        if n < 1024 ** (i + 1) or unit == "TiB":
            return 1024**i, unit
    return 1.0, "B"



# --------------------------------------------------------------------------- curves
def plot_curves(
    rs: RunSet, out: Path, formats: list[str], x: str = "round", opts: PlotOptions = DEFAULT
) -> list[Path]:
    """Accuracy vs round (``x="round"``) or vs cumulative bytes per peer (``x="bytes"``)."""
    from matplotlib.ticker import MaxNLocator

    line, row, col, split = _facets(rs)
    line_vals = rs.values(line) if line else [None]
    written: list[Path] = []
    for svals, sruns in group_runs(rs, split) if split else [((), rs.runs)]:
        rvals = rs.values(row, sruns) if row else [None]
        cvals = rs.values(col, sruns) if col else [None]
        fig, axes = _figure(len(rvals), len(cvals), extra_h=0.3 * (1 + len(line_vals) // 6))
        scale, unit = 1.0, "B"
        if x == "bytes":
            scale, unit = _byte_unit(max(max(_cum_bytes(sruns).values(), default=1), 1))
        n_seeds = 1
        handles = {}
        for i, rv in enumerate(rvals):
            for j, cv in enumerate(cvals):
                ax = axes[i][j]
                ax.set_title(_panel_title(row, rv, col, cv))
                drawn = 0
                for k, lv in enumerate(line_vals):
                    runs = [
                        r
                        for r in sruns
                        if (row is None or r.get(row) == rv)
                        and (col is None or r.get(col) == cv)
                        and (line is None or r.get(line) == lv)
                    ]
                    if not runs:
                        continue
                    runs = _pick(runs)
                    n_seeds = max(n_seeds, len(runs))
                    rounds, mean = _curve(runs, "accuracy_mean")
                    if not rounds:
                        continue
                    _, lo = _curve(runs, "accuracy_min")
                    _, hi = _curve(runs, "accuracy_max")
                    if x == "bytes":
                        cb = _cum_bytes(runs)
                        xs = [cb[t - 1] / scale for t in rounds]
                    else:
                        xs = rounds
                    st = _style(k)
                    every = max(1, len(xs) // 8)
                    (h,) = ax.plot(xs, [100 * v for v in mean], markevery=every, markersize=4, **st)
                    if lo and hi and opts.bands:
                        ax.fill_between(
                            xs, [100 * v for v in lo], [100 * v for v in hi], color=st["color"], alpha=0.12, linewidth=0
                        )
                    handles.setdefault(fmt_value(lv) if line else fmt_value(runs[0].get(STRATEGY)), h)
                    drawn += 1
                if not drawn:
                    ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="#777777")
                if x == "round":
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
                if j == 0:
                    ax.set_ylabel("honest test accuracy (%)")
                if i == len(rvals) - 1:
                    ax.set_xlabel("round" if x == "round" else bytes_label(sruns, line, unit))
        seeds = f", average of {n_seeds} seeds" if n_seeds > 1 else ""
        note = f"line: mean over honest peers{seeds}" + ("; band: their min–max" if opts.bands else "")
        fig.legend(
            list(handles.values()),
            list(handles.keys()),
            title=f"{label(line)}  ({note})" if line else note,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            frameon=False,
        )
        what = "honest accuracy vs round" if x == "round" else "honest accuracy vs bytes sent"
        _titles(fig, rs, what, [k for k in (line, row, col) if k], dict(zip(split, svals, strict=True)), opts)
        name = "accuracy_vs_round" if x == "round" else "accuracy_vs_bytes"
        written += _save(fig, out / (name + _suffix(dict(zip(split, svals, strict=True)))), formats, opts)
    return written


# --------------------------------------------------------------------------- heatmaps
def plot_heatmaps(rs: RunSet, out: Path, formats: list[str], opts: PlotOptions = DEFAULT) -> list[Path]:
    """Final accuracy, strategy × attack and strategy × Byzantine fraction, where those vary."""
    keys = rs.varying_keys()
    frac = next((k for k in FRACTIONS if k in keys), None)
    written: list[Path] = []
    done = RunSet(rs.root, [r for r in rs.runs if r.complete], rs.index)
    if not done.runs:
        return written
    if ATTACK in keys:
        written += _heatmap(done, STRATEGY, ATTACK, frac, out, formats, opts)
    if frac is not None:
        written += _heatmap(done, STRATEGY, frac, ATTACK if ATTACK in keys else None, out, formats, opts)
    return written


def _is_zero(v: Any) -> bool:
    return v in (0, 0.0)


def _heatmap(
    rs: RunSet, rkey: str, ckey: str, pkey: str | None, out: Path, formats: list[str], opts: PlotOptions = DEFAULT
) -> list[Path]:
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    keys = rs.varying_keys()
    split = [k for k in keys if k not in (rkey, ckey, pkey)]
    written: list[Path] = []
    for svals, sruns in group_runs(rs, split) if split else [((), rs.runs)]:
        rvals, cvals = rs.values(rkey, sruns), rs.values(ckey, sruns)
        pvals = rs.values(pkey, sruns) if pkey else [None]
        if pkey in FRACTIONS and len(pvals) > 1:  # with no Byzantine peer the attack is moot
            pvals = [v for v in pvals if not _is_zero(v)]
        grids = []
        for pv in pvals:
            m = np.full((len(rvals), len(cvals)), np.nan)
            s = np.full_like(m, np.nan)
            for i, rv in enumerate(rvals):
                for j, cv in enumerate(cvals):
                    accs = [
                        r.final_accuracy
                        for r in sruns
                        if r.get(rkey) == rv
                        and r.get(ckey) == cv
                        and (pkey is None or r.get(pkey) == pv)
                        and r.final_accuracy is not None
                    ]
                    if accs:
                        mu, sd = mean_std(accs)
                        m[i, j], s[i, j] = 100 * mu, (np.nan if sd is None else 100 * sd)
            grids.append((pv, m, s))
        finite = np.concatenate([g[1][np.isfinite(g[1])] for g in grids])
        if finite.size == 0:
            continue
        norm = Normalize(vmin=float(finite.min()), vmax=float(max(finite.max(), finite.min() + 1e-9)))
        cmap = colormaps["cividis"]
        from matplotlib.figure import Figure

        cw = max(0.75 * len(cvals), 2.2)
        ylab_w = 0.08 * max(len(fmt_value(v)) for v in rvals)
        fig = Figure(figsize=(max(cw * len(grids) + 1.8 + ylab_w, 5.5), 0.55 * len(rvals) + 2.1), layout="constrained")
        axes = fig.subplots(1, len(grids), squeeze=False, sharey=True)[0]
        im = None
        for ax, (pv, m, s) in zip(axes, grids, strict=True):
            masked = np.ma.masked_invalid(m)
            cm = cmap.with_extremes(bad="#dddddd")
            im = ax.imshow(masked, cmap=cm, norm=norm, aspect="auto")
            ax.set_xticks(range(len(cvals)), [fmt_value(v) for v in cvals], rotation=30 if len(cvals) > 4 else 0)
            ax.set_yticks(range(len(rvals)), [fmt_value(v) for v in rvals])
            ax.set_xlabel(label(ckey))
            ax.grid(False)
            for sp in ax.spines.values():
                sp.set_visible(False)
            if pkey is not None:
                ax.set_title(f"{label(pkey)}: {fmt_value(pv)}")
            for i in range(len(rvals)):
                for j in range(len(cvals)):
                    if not np.isfinite(m[i, j]):
                        ax.text(j, i, "n/a", ha="center", va="center", color="#555555")
                        continue
                    r, g, b, _ = cmap(norm(m[i, j]))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    txt = f"{m[i, j]:.1f}" + (f"\n±{s[i, j]:.1f}" if np.isfinite(s[i, j]) else "")
                    ax.text(j, i, txt, ha="center", va="center", color=colour, fontsize=7.5)
        axes[0].set_ylabel(label(rkey))
        fig.colorbar(im, ax=list(axes), label="final honest accuracy (%)", shrink=0.9)
        extra = dict(zip(split, svals, strict=True))
        n = max(len(r_) for _, r_ in group_runs(rs, [rkey, ckey] + ([pkey] if pkey else []), sruns))
        _titles(
            fig,
            rs,
            "final honest accuracy" + (f", mean ± std over {n} seeds" if n > 1 else ""),
            [rkey, ckey] + ([pkey] if pkey else []),
            extra,
            opts,
        )
        cname = label(ckey).lower().replace(" ", "_")
        written += _save(fig, out / (f"heatmap_{label(rkey)}_x_{cname}" + _suffix(extra)), formats, opts)
    return written



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
    out = Path(out) if out else Path(directory) / "plots"
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
@click.option("--no-bands", is_flag=True, help="No min–max band around the accuracy lines.")
def plot(
    directory: Path, out: Path | None, formats: str, title: str | None, no_title: bool, size: str | None,
    no_bands: bool
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
      fedsim plot runs/attack-matrix --format pdf --no-title --size 3.5,2.6 --no-bands
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
                       bands=not no_bands)
    try:
        written = plot_dir(directory, out, fmts, log=lambda m: click.echo(m, err=True), opts=opts)
    except FileNotFoundError as e:
        raise click.ClickException(str(e)) from None
    if not written:
        raise click.ClickException(f"{directory}: nothing to plot yet (no evaluation rounds in metrics.jsonl)")
    for p in written:
        click.echo(str(p))
