"""``fedsim plot``'s heatmaps of final accuracy: strategy × attack and strategy × Byzantine
fraction, where those vary (``cividis``). matplotlib is imported only inside the drawing function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim._runs import (
    ATTACK,
    FRACTIONS,
    STRATEGY,
    RunSet,
    fmt_value,
    group_runs,
    label,
    mean_std,
)
from fedsim.plot_style import (
    DEFAULT,
    PlotOptions,
    _save,
    _suffix,
    _titles,
    seed_span,
)


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


def over_seeds(counts: list[int]) -> str:
    """The heatmap title's ``, mean ± std over n seeds`` for cells averaging ``counts`` runs each:
    ``n`` when every cell has as many, ``n_min–n_max`` otherwise (the largest alone overstated the
    others); nothing when no cell averages more than one run."""
    span = seed_span(counts)
    return f", mean ± std over {span} seeds" if span else ""


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
        grids, seeds = [], []
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
                        seeds.append(len(accs))
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
        _titles(
            fig,
            rs,
            "final honest accuracy" + over_seeds(seeds),
            [rkey, ckey] + ([pkey] if pkey else []),
            extra,
            opts,
        )
        cname = label(ckey).lower().replace(" ", "_")
        written += _save(fig, out / (f"heatmap_{label(rkey)}_x_{cname}" + _suffix(extra)), formats, opts)
    return written
