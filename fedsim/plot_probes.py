"""``fedsim plot``'s probe figures (``probes_*``), for runs with a ``probes.json``: cloning curves
(agreement and clone accuracy vs queries) and unlearning curves/bars (:func:`plot_probes`, called
by :func:`fedsim.plot.plot_dir`; :func:`probe_records` finds the records in any of the layouts a
``probes.json`` has had). matplotlib is imported only inside the functions that draw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim._runs import RunSet, get_dotted
from fedsim.plot_style import DEFAULT, OKABE_ITO, PANEL_H, PANEL_W, PlotOptions, _context, _save, _style, _suptitle


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

