"""A row of panels sharing the y axis, saved as a PNG: the figure boilerplate of the benchmarks that
draw one (``fedbn_feature_shift.py``, ``federated_unlearning_figure.py``). matplotlib (Agg) is
imported only when a figure is made."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def panels(n: int, panel_width: float, height: float = 3.6) -> tuple[Any, Any]:
    """``(figure, axes)``: ``n`` panels of ``panel_width`` inches side by side, one y axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_width * n, height))
    return fig, fig.subplots(1, n, sharey=True, squeeze=False)[0]


def save(fig: Any, axes: Any, out: Path, ylabel: str, legend_loc: str) -> None:
    """Label the first panel's y axis, put the legend in the last panel, lay out, write ``out``
    (130 dpi, its folder made) and print its path."""
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=8, loc=legend_loc)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(out)
