"""``fedsim plot``'s accuracy curves: honest accuracy against the round (``accuracy_vs_round``)
or against the cumulative bytes each peer sent (``accuracy_vs_bytes``, :func:`bytes_label` says
what a message carries), one line per strategy with the honest peers' min–max band (or, with
``band="seeds"``, ± one sample std over the seeds), one panel per attack × Byzantine fraction.
matplotlib is imported only inside the drawing function.
"""

from __future__ import annotations

from pathlib import Path

from fedsim._runs import (
    ATTACK,
    FRACTIONS,
    STRATEGY,
    RunData,
    RunSet,
    fmt_value,
    group_runs,
    label,
    mean_std,
)
from fedsim.plot_style import (
    DEFAULT,
    EXCHANGES,
    STYLE,
    PlotOptions,
    _figure,
    _panel_title,
    _save,
    _style,
    _suffix,
    _titles,
    chars_per_inch,
    fig_width,
    line_chars,
    seed_span,
    wrap_label,
)

Y_LABEL = "honest test accuracy (%)"


# --------------------------------------------------------------------------- helpers
def _exchanges(run: RunData) -> str | None:
    """What a message of ``run``'s rule carries (``full_model`` | ``output_layer``): from its
    summary, else from the rule built with the run's parameters (runs made before the summary
    recorded it; the instance's: a pre-aggregator's inner rule's); None where it no longer builds."""
    if run.summary and run.summary.get("exchanges"):
        return str(run.summary["exchanges"])
    try:
        import strategies

        return strategies.build(str(run.get(STRATEGY)), dict(run.get("strategy.params") or {})).exchanges
    except (ImportError, ValueError, TypeError):
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


def _pick(runs: list[RunData]) -> list[RunData]:
    """The complete runs of a group if any, else all (a run still going)."""
    done = [r for r in runs if r.complete]
    return done or runs


def _curve(runs: list[RunData], field: str) -> tuple[list[int], list[float]]:
    """(rounds counted from 1, mean over runs of ``field``) at rounds every run evaluated."""
    per = [{int(m["round"]): m[field] for m in r.evaluations if field in m} for r in runs]
    common = sorted(set.intersection(*(set(p) for p in per))) if per else []
    return [x + 1 for x in common], [sum(p[x] for p in per) / len(per) for x in common]


def _seed_band(runs: list[RunData], field: str) -> tuple[list[float], list[float]]:
    """(mean − std, mean + std) over ``runs`` (the seeds of one line; sample std, n − 1) of
    ``field`` at :func:`_curve`'s rounds; empty for a single run (no spread to show)."""
    if len(runs) < 2:
        return [], []
    per = [{int(m["round"]): m[field] for m in r.evaluations if field in m} for r in runs]
    lo, hi = [], []
    for t in sorted(set.intersection(*(set(p) for p in per))):
        m, s = mean_std([p[t] for p in per])
        lo.append(m - (s or 0.0))
        hi.append(m + (s or 0.0))
    return lo, hi


def _cum_bytes(runs: list[RunData]) -> dict[int, float]:
    """Round → cumulative bytes sent per peer through that round (mean over runs)."""
    out: dict[int, list[float]] = {}
    for r in runs:
        tot = 0.0
        for m in r.metrics:
            tot += m.get("bytes_sent_per_peer", 0)
            out.setdefault(int(m["round"]), []).append(tot)
    return {k: sum(v) / len(v) for k, v in out.items()}


def legend_columns(labels: list[str], width_in: float, most: int = 6) -> int:
    """Legend columns (at most ``most``) whose entries fit side by side in ``width_in`` inches: an
    entry is its longest label at the legend's font size (:func:`fedsim.plot_style.chars_per_inch`)
    plus the handle, its padding and the column spacing (2 + 0.8 + 2 em)."""
    size = STYLE["legend.fontsize"]
    entry = max((len(t) for t in labels), default=1) / chars_per_inch(size) + 4.8 * size / 72
    return max(1, min(len(labels), most, int(width_in // entry)))


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
        seed_counts: list[int] = []  # runs each drawn line averages
        banded = False  # whether any line got a band (--band seeds: none for a single seed)
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
                    rounds, mean = _curve(runs, "accuracy_mean")
                    if not rounds:
                        continue
                    seed_counts.append(len(runs))
                    if opts.band == "seeds":
                        lo, hi = _seed_band(runs, "accuracy_mean")
                    else:
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
                        banded = True
                    handles.setdefault(fmt_value(lv) if line else fmt_value(runs[0].get(STRATEGY)), h)
                    drawn += 1
                if not drawn:
                    ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="#777777")
                if x == "round":
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
                if j == 0 and len(rvals) == 1:  # rows: one label for all (below), not one per row
                    ax.set_ylabel(Y_LABEL)
                if i == len(rvals) - 1:  # wrapped to the panel's width, as the legend to the figure's
                    panel = line_chars(fig_width(fig, opts) / len(cvals), STYLE["axes.labelsize"])
                    ax.set_xlabel("round" if x == "round" else wrap_label(bytes_label(sruns, line, unit), panel))
        if len(rvals) > 1:  # one per row overlapped its neighbours once longer than a panel is tall
            fig.supylabel(Y_LABEL, fontsize=STYLE["axes.labelsize"])
        span = seed_span(seed_counts)
        seeds = f"; averaged over {span} seeds" if span else ""  # "; ": where a narrow legend wraps
        band = "± 1 std over seeds" if opts.band == "seeds" else "their min–max"
        if banded:
            band = f"; band: {band}"
        else:  # asked for a band over seeds where every line has one seed: say so, not a band it lacks
            band = "; no band: one seed a line" if opts.bands and opts.band == "seeds" else ""
        note = f"line: mean over honest peers{seeds}{band}"
        fig.legend(
            list(handles.values()),
            list(handles.keys()),
            title=wrap_label(f"{label(line)}  ({note})" if line else note,
                             line_chars(fig_width(fig, opts), STYLE["legend.title_fontsize"]), "; "),
            loc="outside lower center",
            ncols=legend_columns(list(handles), fig_width(fig, opts)),
            frameon=False,
        )
        what = "honest accuracy vs round" if x == "round" else "honest accuracy vs bytes sent"
        _titles(fig, rs, what, [k for k in (line, row, col) if k], dict(zip(split, svals, strict=True)), opts)
        name = "accuracy_vs_round" if x == "round" else "accuracy_vs_bytes"
        written += _save(fig, out / (name + _suffix(dict(zip(split, svals, strict=True)))), formats, opts)
    return written
