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
from dataclasses import dataclass
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
    get_dotted,
    group_runs,
    label,
    load_runs,
    mean_std,
    shared_settings,
)

OKABE_ITO = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#F0E442"]
# lines: Okabe–Ito without yellow (#F0E442, too light on white), then Paul Tol's wine, olive, indigo
PALETTE = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#0072B2", "#D55E00", "#CC79A7", "#882255", "#999933",
           "#332288"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1))]  # the last: dash-dot-dot
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]
EXCHANGES = {"full_model": "full model (backbone + head)", "output_layer": "head only (output layer)"}
STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    "ps.fonttype": 42,
    "savefig.dpi": 200,
}
PANEL_W, PANEL_H = 3.6, 2.6


@dataclass(frozen=True)
class PlotOptions:
    """What ``fedsim plot`` lets a paper's author change.

    ``title``: the first title line of every figure (default: the sweep's or run's own name and
    what the figure shows); ``show_title``: False draws no title at all (the caption says it);
    ``size``: every figure's ``(width, height)`` in inches (default: from its panels);
    ``bands``: draw the honest peers' min–max band around each line."""

    title: str | None = None
    show_title: bool = True
    size: tuple[float, float] | None = None
    bands: bool = True


DEFAULT = PlotOptions()


# --------------------------------------------------------------------------- helpers
def _style(i: int) -> dict[str, Any]:
    """Line ``i``'s colour (:data:`PALETTE`), dash pattern and marker: ten lines differ in all three
    (the patterns cycle every 5, so two lines of one pattern always differ in colour and marker)."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "linestyle": LINESTYLES[i % len(LINESTYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


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


def _context(rs: RunSet, skip: Iterable[str]) -> str:
    return " · ".join(shared_settings(rs, skip))


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


def _save(fig, path: Path, formats: list[str], opts: PlotOptions = DEFAULT) -> list[Path]:
    if opts.size is not None:
        fig.set_size_inches(*opts.size)
    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        p = path.with_name(f"{path.name}.{fmt}")
        meta = {"CreationDate": None} if fmt == "pdf" else None  # byte-stable PDFs
        fig.savefig(p, format=fmt, metadata=meta, bbox_inches="tight")
        out.append(p)
    return out


def _figure(nrows: int, ncols: int, extra_w: float = 0.0, extra_h: float = 0.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(PANEL_W * ncols + extra_w, 5.2), PANEL_H * nrows + 0.9 + extra_h), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    return fig, axes


def _titles(
    fig, rs: RunSet, what: str, skip: Iterable[str], extra: dict[str, Any], opts: PlotOptions = DEFAULT
) -> None:
    """Title: the sweep's own name and what is shown (or ``opts.title``); below it the facet values
    of this figure and the settings every run shares, wrapped to the figure's width."""
    parts = [f"{label(k)} {fmt_value(v)}" for k, v in extra.items()]
    ctx = _context(rs, list(skip) + list(extra))
    _suptitle(fig, f"{rs.title}: {what}", parts + (ctx.split(" · ") if ctx else []), opts)


def _suptitle(fig, head: str, parts: list[str], opts: PlotOptions = DEFAULT) -> None:
    """``head`` (or ``opts.title``) over the ``parts`` joined by `` · ``, wrapped between parts to
    the figure's width (the width ``opts.size`` will give it); nothing with ``opts.show_title`` off."""
    if not opts.show_title:
        return
    if opts.title is not None:
        head = opts.title
    width = max(30, int((opts.size[0] if opts.size else fig.get_figwidth()) * 11))
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 3 + len(part) <= width:
            lines[-1] += " · " + part
        else:
            lines.append(part)
    fig.suptitle("\n".join([head, *lines]))


def _panel_title(row: str | None, rv: Any, col: str | None, cv: Any) -> str:
    parts = []
    if row is not None:
        parts.append(f"{label(row)}: {fmt_value(rv)}")
    if col is not None:
        parts.append(f"{label(col)}: {fmt_value(cv)}")
    return " · ".join(parts)


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


# --------------------------------------------------------------------------- probes
def probe_records(obj: Any) -> dict[str, list[dict[str, Any]]]:
    """Cloning and unlearning records found anywhere in a parsed ``probes.json``.

    Accepts a list of records, ``{"records": [...]}``, ``{"cloning": [...], ...}`` or
    ``[{"kind": "cloning", "records": [...]}, ...]``. A cloning record has ``queries`` and
    ``agreement`` or ``clone_accuracy``; an unlearning record has ``before``/``after`` or a trace
    (``forget_accuracy`` as a list)."""
    found: dict[str, list[dict[str, Any]]] = {"cloning": [], "unlearning": []}

    def walk(o: Any, depth: int = 0) -> None:
        if depth > 6:
            return
        if isinstance(o, list):
            for x in o:
                walk(x, depth + 1)
        elif isinstance(o, dict):
            if "queries" in o and ("agreement" in o or "clone_accuracy" in o):
                found["cloning"].append(o)
            elif ("before" in o and "after" in o) or isinstance(o.get("forget_accuracy"), list):
                found["unlearning"].append(o)
            else:
                for v in o.values():
                    walk(v, depth + 1)

    walk(obj)
    return found


def _num_or_none(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def plot_cloning(
    records: list[dict[str, Any]],
    title: str,
    path: Path,
    formats: list[str],
    context: str = "",
    opts: PlotOptions = DEFAULT,
) -> list[Path]:
    """Agreement and clone accuracy vs queries, one line per (defence, k, repeats, output, method)."""
    from matplotlib.figure import Figure

    groups: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        bits = [str(rec["defence"])] if rec.get("defence") not in (None, "none") else []
        bits += [f"k={rec['k']}"] if "k" in rec else []
        bits += [f"×{rec['repeats']} avg"] if (rec.get("repeats") or 1) != 1 else []
        bits += [str(rec[f]) for f in ("output", "method") if rec.get(f)]
        groups.setdefault(" · ".join(bits) or "clone", []).append(rec)
    fields = [("agreement", "agreement with target (%)"), ("clone_accuracy", "clone test accuracy (%)")]
    fields = [f for f in fields if any(_num_or_none(r.get(f[0])) is not None for r in records)]
    if not fields:
        return []
    fig = Figure(figsize=(max(PANEL_W * len(fields) + 0.6, 5.2), PANEL_H + 1.5), layout="constrained")
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    qs = [q for r in records if (q := _num_or_none(r.get("queries"))) is not None and q > 0]
    logx = bool(qs) and max(qs) / min(qs) >= 20
    for ax, (f, ylab) in zip(axes, fields, strict=True):
        for k, (name, recs) in enumerate(groups.items()):
            pts = sorted(
                (q, v)
                for r in recs
                if (q := _num_or_none(r.get("queries"))) is not None and (v := _num_or_none(r.get(f))) is not None
            )
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], label=name, markersize=4, **_style(k))
        if f == "clone_accuracy":
            tgt = [t for r in records if (t := _num_or_none(r.get("target_accuracy"))) is not None]
            if tgt:
                ax.axhline(
                    100 * sum(tgt) / len(tgt), color="#666666", linestyle=":", linewidth=1.2, label="target model"
                )
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel("oracle queries")
        ax.set_ylabel(ylab)
    handles, labels = axes[-1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), frameon=False, title="answers")
    _suptitle(fig, f"{title}: model cloning", context.split(" · ") if context else [], opts)
    return _save(fig, path, formats, opts)


def plot_unlearning(
    records: list[dict[str, Any]],
    title: str,
    path: Path,
    formats: list[str],
    context: str = "",
    opts: PlotOptions = DEFAULT,
) -> list[Path]:
    """Ascent traces (forget/reference accuracy and loss per step) and before/after/retrained bars."""
    from matplotlib.figure import Figure

    traces = [r.get("trace") if isinstance(r.get("trace"), dict) else r for r in records]
    traces = [t for t in traces if isinstance(t, dict) and isinstance(t.get("forget_accuracy"), list)]
    bars = [r for r in records if isinstance(r.get("before"), dict) and isinstance(r.get("after"), dict)]
    n = (2 if traces else 0) + (1 if bars else 0)
    if n == 0:
        return []
    fig = Figure(figsize=(max(PANEL_W * n + 0.6, 5.2), PANEL_H + 1.2), layout="constrained")
    axes = list(fig.subplots(1, n, squeeze=False)[0])
    if traces:
        specs = [
            (
                axes.pop(0),
                [("forget_accuracy", "forget set"), ("reference_accuracy", "reference")],
                "accuracy (%)",
                100,
            ),
            (axes.pop(0), [("forget_loss", "forget set"), ("reference_loss", "reference")], "cross-entropy loss", 1),
        ]
        for ax, pairs, ylab, mult in specs:
            for k, (f, name) in enumerate(pairs):
                for t_i, t in enumerate(traces):
                    ys = [v for v in t.get(f) or [] if isinstance(v, (int, float))]
                    if ys:
                        st = _style(k)
                        ax.plot(
                            range(len(ys)),
                            [mult * y for y in ys],
                            label=name if t_i == 0 else None,
                            alpha=1.0 if len(traces) == 1 else 0.6,
                            markersize=3,
                            **st,
                        )
            ax.set_xlabel("gradient-ascent step")
            ax.set_ylabel(ylab)
            ax.legend(frameon=False)
    if bars:
        import numpy as np

        ax = axes.pop(0)
        metrics = [
            m
            for m in ("forget_accuracy", "retain_accuracy", "test_accuracy", "mia_advantage")
            if any(_num_or_none(b["before"].get(m)) is not None for b in bars)
        ]
        models = [m for m in ("before", "after", "retrained") if any(isinstance(b.get(m), dict) for b in bars)]
        width = 0.8 / len(models)
        for k, model in enumerate(models):
            vals = []
            for m in metrics:
                xs = [
                    v
                    for b in bars
                    if isinstance(b.get(model), dict) and (v := _num_or_none(b[model].get(m))) is not None
                ]
                vals.append(100 * sum(xs) / len(xs) if xs else np.nan)
            ax.bar(
                np.arange(len(metrics)) + (k - (len(models) - 1) / 2) * width,
                vals,
                width,
                color=OKABE_ITO[(k + 1) % len(OKABE_ITO)],
                label=model,
            )
        ax.set_xticks(
            range(len(metrics)),
            [m.replace("_accuracy", " acc.").replace("mia_", "MIA ").replace("_", " ") for m in metrics],
            rotation=20,
        )
        ax.set_ylabel("accuracy / MIA advantage (%)")
        ax.legend(frameon=False, title="model")
        ax.grid(axis="x", visible=False)
    _suptitle(fig, f"{title}: unlearning", context.split(" · ") if context else [], opts)
    return _save(fig, path, formats, opts)


def plot_probes(rs: RunSet, out: Path, formats: list[str], log=print, opts: PlotOptions = DEFAULT) -> list[Path]:
    """Probe figures of every run with a ``probes.json`` (one file per run and probe kind)."""
    written: list[Path] = []
    many = len(rs.runs) > 1
    for r in rs.runs:
        obj = r.probes()
        if obj is None:
            if (r.path / "probes.json").exists():
                log(f"{r.path / 'probes.json'}: not readable JSON; skipped")
            continue
        recs = probe_records(obj)
        if not recs["cloning"] and not recs["unlearning"]:
            log(f"{r.path / 'probes.json'}: no cloning or unlearning records recognised; skipped")
            continue
        title = r.name if many else str(get_dotted(r.scenario, "name", r.name))
        ctx = _context(RunSet(r.path, [r]), [])
        sub = f"__{r.name}" if many else ""
        if recs["cloning"]:
            written += plot_cloning(recs["cloning"], title, out / f"probes_cloning{sub}", formats, ctx, opts)
        if recs["unlearning"]:
            written += plot_unlearning(recs["unlearning"], title, out / f"probes_unlearning{sub}", formats, ctx, opts)
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
