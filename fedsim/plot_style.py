"""How ``fedsim plot``'s figures look, shared by :mod:`fedsim.plot` (curves, heatmaps) and
:mod:`fedsim.plot_probes` (probe figures): the palette (ten lines apart in colour, dash and
marker), the rc style, :class:`PlotOptions` (title, size, bands), titles wrapped to the figure's
width, and saving in every format. matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim._runs import RunSet, fmt_value, label, shared_settings

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
    ``bands``: draw a band around each line; ``band``: which: ``"peers"``, the honest peers'
    min–max (averaged over seeds), or ``"seeds"``, the line ± one sample standard deviation of
    the seeds' means (none for a single seed)."""

    title: str | None = None
    show_title: bool = True
    size: tuple[float, float] | None = None
    bands: bool = True
    band: str = "peers"


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


def _context(rs: RunSet, skip: Iterable[str]) -> str:
    return " · ".join(shared_settings(rs, skip))



def _save(fig, path: Path, formats: list[str], opts: PlotOptions = DEFAULT) -> list[Path]:
    if opts.size is not None:
        fig.set_size_inches(*opts.size)
    from fedsim.rundir import atomic_path

    out = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        p = path.with_name(f"{path.name}.{fmt}")
        meta = {"CreationDate": None} if fmt == "pdf" else None  # byte-stable PDFs
        # renamed over p: a symbolic link planted at p is replaced, never written through; saved to
        # a path of p's name, so the file is what a plain savefig to p writes (the umask sets its
        # mode; PS/EPS name it in %%Title:, which a file handle lost)
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=fmt, metadata=meta, bbox_inches="tight")
        out.append(p)
    return out


def _suffix(values: dict[str, Any]) -> str:
    """A figure file's name suffix for the settings that split figures (``__`` + the sweep's run name;
    where making it file-safe replaced a character, ``~`` + a digest of the values too, so two settings
    that differ only there, ``é`` and ``ü``, do not write the same file)."""
    from fedsim.sweep_plan import _UNSAFE, _digest, run_name

    if not values:
        return ""
    name = run_name(values)
    if "~" not in name and any(_UNSAFE.search(x) for x in _strings(values)):
        name += "~" + _digest(values)
    return "__" + name


def _strings(v: Any) -> Iterator[str]:
    """Every key and leaf of ``v`` as the text a file name is made from."""
    if isinstance(v, dict):
        for k, x in v.items():
            yield str(k)
            yield from _strings(x)
    elif isinstance(v, (list, tuple)):
        for x in v:
            yield from _strings(x)
    else:
        yield str(v)


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


def fig_width(fig, opts: PlotOptions = DEFAULT) -> float:
    """The width in inches ``fig`` is saved at (``opts.size``'s, else its own)."""
    return opts.size[0] if opts.size else fig.get_figwidth()


def chars_per_inch(fontsize: float) -> float:
    """About how many characters of ``fontsize``-point text fill an inch: 11 at 10 pt (DejaVu
    Sans's average character with a margin)."""
    return 110 / fontsize


def line_chars(width_in: float, fontsize: float) -> int:
    """The characters of ``fontsize``-point text a line ``width_in`` inches wide holds
    (:func:`chars_per_inch`; at least 30)."""
    return max(30, int(width_in * chars_per_inch(fontsize)))


def wrap_parts(parts: Iterable[str], width: int, sep: str = " · ") -> list[str]:
    """``parts`` joined by ``sep`` into lines of at most ``width`` characters, broken between parts;
    a part longer than a line is broken between words."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(part)
    return [w for line in lines for w in (textwrap.wrap(line, width, break_on_hyphens=False) or [line])]


def wrap_label(text: str, width: int, sep: str = " · ") -> str:
    """Each line of ``text`` wrapped to ``width`` characters by :func:`wrap_parts` (between its
    ``sep``-joined parts first), so a label never widens the figure past the size asked for."""
    return "\n".join(w for line in text.split("\n") for w in wrap_parts(line.split(sep), width, sep))


def _suptitle(fig, head: str, parts: list[str], opts: PlotOptions = DEFAULT) -> None:
    """``head`` (or ``opts.title``) over the ``parts`` joined by `` · ``, wrapped between parts to
    the figure's width (the width ``opts.size`` will give it); nothing with ``opts.show_title`` off."""
    if not opts.show_title:
        return
    if opts.title is not None:
        head = opts.title
    fig.suptitle("\n".join([head, *wrap_parts(parts, line_chars(fig_width(fig, opts), STYLE["figure.titlesize"]))]))


def _panel_title(row: str | None, rv: Any, col: str | None, cv: Any) -> str:
    parts = []
    if row is not None:
        parts.append(f"{label(row)}: {fmt_value(rv)}")
    if col is not None:
        parts.append(f"{label(col)}: {fmt_value(cv)}")
    return " · ".join(parts)


def seed_span(counts: list[int]) -> str:
    """How many seeds the drawn lines or cells average, ``counts`` runs each: ``"n"`` when every one
    has as many, ``"n_min–n_max"`` otherwise (the largest alone overstated the others); ``""`` when
    none averages more than one run. The heatmaps' title and the curves' note both say it."""
    if not counts or max(counts) <= 1:
        return ""
    lo, hi = min(counts), max(counts)
    return str(hi) if lo == hi else f"{lo}–{hi}"
