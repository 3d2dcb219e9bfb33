"""`fedsim plot`: figures of a tiny run and a tiny sweep are written (PNG + PDF, non-empty), probe
curves are drawn when probes.json holds records and skipped otherwise, and importing the CLI
modules does not import matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim.plot import plot, probe_records
from fedsim.sweep_execute import execute_sweep
from fedsim.sweep_plan import plan_sweep


def _scenario(tmp: Path) -> Path:
    sc = {
        "name": "tiny",
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "peers": {"count": 6},
        "topology": {"kind": "k_regular", "degree": 4},
        "rounds": 3,
        "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 2},
        "engine": {"backend": "local", "num_actors": 1},
    }
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump(sc))
    return path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("plot")
    grid = {
        "strategy.name": ["fedavg", "median"],
        "peers.attack.name": ["none", "sign_flip", "alie"],  # none at fraction 0, the attacks at 0.2
        "peers.byzantine_fraction": [0.0, 0.2],
    }
    plan = plan_sweep(_scenario(tmp), grid, out=tmp / "sw", skip_invalid=True)  # no attack without Byzantine peers
    assert not execute_sweep(plan, local=True).failed
    return plan.out


def _check(files: list[Path]) -> None:
    for f in files:
        data = f.read_bytes()
        assert len(data) > 1000, f
        assert data.startswith(b"\x89PNG" if f.suffix == ".png" else b"%PDF"), f


def test_plot_tiny_run_png_and_pdf(sweep_dir, tmp_path) -> None:
    run = sweep_dir / "strategy.name=fedavg__peers.attack.name=alie__peers.byzantine_fraction=0.2"
    res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    files = [Path(x) for x in res.output.split()]
    names = {f.name for f in files}
    assert {"accuracy_vs_round.png", "accuracy_vs_round.pdf", "accuracy_vs_bytes.png", "accuracy_vs_bytes.pdf"} <= names
    _check(files)
    # default folder and --format
    res = CliRunner().invoke(plot, [str(run), "--format", "png"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["accuracy_vs_bytes.png", "accuracy_vs_round.png"]
    res = CliRunner().invoke(plot, [str(run), "--format", "gif"])
    assert res.exit_code != 0 and "choose from" in res.output


def test_plot_sweep_heatmaps(sweep_dir, tmp_path) -> None:
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    files = [Path(x) for x in res.output.split()]
    stems = {f.stem for f in files}
    assert stems == {
        "accuracy_vs_round",
        "accuracy_vs_bytes",
        "heatmap_strategy_x_attack",
        "heatmap_strategy_x_byzantine_fraction",
    }
    assert len(files) == 8
    _check(files)


CLONING = [
    {
        "queries": q,
        "k": k,
        "output": "full",
        "method": "least_squares",
        "agreement": a,
        "clone_accuracy": a - 0.01,
        "target_accuracy": 0.95,
    }
    for k in (10, 1)
    for q, a in ((5, 0.5), (50, 0.8), (500, 0.97))
]
UNLEARNING = {
    "before": {"forget_accuracy": 1.0, "retain_accuracy": 0.98, "test_accuracy": 0.9, "mia_advantage": 0.6},
    "after": {"forget_accuracy": 0.6, "retain_accuracy": 0.95, "test_accuracy": 0.88, "mia_advantage": 0.2},
    "retrained": {"forget_accuracy": 0.62, "retain_accuracy": 0.97, "test_accuracy": 0.9, "mia_advantage": 0.15},
    "trace": {
        "forget_accuracy": [1.0, 0.9, 0.6],
        "reference_accuracy": [0.9, 0.9, 0.88],
        "forget_loss": [0.01, 0.5, 2.0],
        "reference_loss": [0.4, 0.45, 0.5],
    },
}


def test_probe_records_formats() -> None:
    for obj in (CLONING, {"records": CLONING}, {"cloning": CLONING}, [{"kind": "cloning", "records": CLONING}]):
        assert len(probe_records(obj)["cloning"]) == 6
    found = probe_records({"probes": [{"kind": "unlearning", "records": [UNLEARNING]}, {"kind": "x", "records": [1]}]})
    assert found["unlearning"] == [UNLEARNING] and found["cloning"] == []


def test_plot_probes_and_skip_unknown(sweep_dir, tmp_path) -> None:
    run = sweep_dir / "strategy.name=median__peers.attack.name=none__peers.byzantine_fraction=0"
    probes = run / "probes.json"
    try:
        probes.write_text(
            json.dumps([{"kind": "cloning", "records": CLONING}, {"kind": "unlearning", "result": UNLEARNING}])
        )
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "a"), "--format", "png"])
        assert res.exit_code == 0, res.output
        files = [Path(x) for x in res.output.split()]
        assert {"probes_cloning.png", "probes_unlearning.png"} <= {f.name for f in files}
        _check(files)
        probes.write_text(json.dumps({"format": "not yet fixed", "values": [1, 2]}))
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "b"), "--format", "png"])
        assert res.exit_code == 0 and "no cloning or unlearning records" in res.output
        assert not list((tmp_path / "b").glob("probes_*"))
        probes.write_text("{broken")
        res = CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "c"), "--format", "png"])
        assert res.exit_code == 0 and "not readable JSON" in res.output
    finally:
        probes.unlink(missing_ok=True)


def test_cli_modules_do_not_import_matplotlib() -> None:
    code = "import sys, fedsim.plot, fedsim.report, fedsim.sweep; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- figures for papers (issue 16, item 7)
@pytest.fixture
def figures(monkeypatch) -> list:
    """The matplotlib figures `fedsim plot` saves, as (figure, path) in order (files still written)."""
    import fedsim.plot_curves
    import fedsim.plot_heatmaps
    import fedsim.plot_style as style

    seen: list = []
    real = style._save

    def record(fig, path, formats, opts=style.DEFAULT):
        out = real(fig, path, formats, opts)
        seen.append((fig, path))
        return out

    for drawer in (fedsim.plot_curves, fedsim.plot_heatmaps):  # where the curves and heatmaps are saved
        monkeypatch.setattr(drawer, "_save", record)
    return seen


def _suptitle(fig) -> str | None:
    return fig._suptitle.get_text() if fig._suptitle is not None else None


def test_titles_name_the_sweep_not_its_base_scenario(sweep_dir, tmp_path, figures) -> None:
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path), "--format", "png"])
    assert res.exit_code == 0, res.output
    heads = {p.name: _suptitle(f).splitlines()[0] for f, p in figures}
    assert heads["accuracy_vs_round"] == "sw: honest accuracy vs round"  # the sweep's folder, not 'tiny'
    assert {"accuracy_vs_bytes", "heatmap_strategy_x_attack", "heatmap_strategy_x_byzantine_fraction"} <= set(heads)
    assert all(h.startswith("sw: ") for h in heads.values()), heads


def test_title_options(sweep_dir, tmp_path, figures) -> None:
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path / "a"), "--format", "png",
                                    "--title", "Robust rules under attack"])
    assert res.exit_code == 0, res.output
    assert figures and all(_suptitle(f).splitlines()[0] == "Robust rules under attack" for f, _ in figures)
    figures.clear()
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path / "b"), "--format", "png", "--no-title"])
    assert res.exit_code == 0, res.output
    assert figures and all(_suptitle(f) is None for f, _ in figures)
    res = CliRunner().invoke(plot, [str(sweep_dir), "--title", "x", "--no-title"])
    assert res.exit_code == 2 and "not both" in res.output


def test_size_sets_every_figure_in_inches(sweep_dir, tmp_path, figures) -> None:
    res = CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path), "--format", "pdf", "--size", "6.5,4"])
    assert res.exit_code == 0, res.output
    assert len(figures) == 4
    assert all(tuple(f.get_size_inches()) == (6.5, 4.0) for f, _ in figures)
    for bad in ("3.5", "a,b", "0,2", "3,2,1", "100,2"):
        res = CliRunner().invoke(plot, [str(sweep_dir), "--size", bad])
        assert res.exit_code == 2 and "--size" in res.output and "inches" in res.output, (bad, res.output)


def test_no_bands_drops_the_min_max_bands(sweep_dir, tmp_path, figures) -> None:
    from matplotlib.collections import PolyCollection

    def bands(fig) -> int:
        return sum(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)

    CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path / "a"), "--format", "png"])
    with_bands = {p.name: bands(f) for f, p in figures if p.name.startswith("accuracy_vs")}
    figures.clear()
    CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path / "b"), "--format", "png", "--no-bands"])
    without = {p.name: bands(f) for f, p in figures if p.name.startswith("accuracy_vs")}
    assert with_bands["accuracy_vs_round"] >= 2 and without == {"accuracy_vs_round": 0, "accuracy_vs_bytes": 0}
    legend = [f for f, p in figures if p.name == "accuracy_vs_round"][0].legends[0].get_title().get_text()
    assert "band" not in legend


def test_band_seeds_is_the_seeds_spread_of_each_line(tmp_path, figures) -> None:
    """--band seeds: around each line, its mean ± the sample std (n − 1) of the seeds' mean honest
    accuracy, recomputed here from each run's metrics.jsonl; the legend says so; one seed: no band
    (no spread to show). Before, a paper figure over seeds could show only the honest peers' min–max."""
    import statistics

    from matplotlib.collections import PolyCollection

    plan = plan_sweep(_scenario(tmp_path), {"strategy.name": ["fedavg", "median"], "seed": [0, 1, 2]},
                      out=tmp_path / "sw")
    assert not execute_sweep(plan, local=True).failed
    res = CliRunner().invoke(plot, [str(plan.out), "--out", str(tmp_path / "f"), "--format", "png", "--band", "seeds"])
    assert res.exit_code == 0, res.output
    fig = next(f for f, p in figures if p.name == "accuracy_vs_round")
    assert "band: ± 1 std over seeds" in fig.legends[0].get_title().get_text()
    ax = fig.axes[0]
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    for name, line, poly in zip(["fedavg", "median"], ax.get_lines(), polys, strict=True):  # the grid's order
        runs = sorted(plan.out.glob(f"strategy.name={name}__seed=*"))
        accs = [[json.loads(x)["accuracy_mean"] for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
        per_round = list(zip(*accs, strict=True))
        assert len(runs) == 3 and list(line.get_xdata()) == [1, 2, 3]
        assert line.get_ydata() == pytest.approx([100 * statistics.mean(a) for a in per_round])
        ys = poly.get_paths()[0].vertices[:, 1]
        lo = [100 * (statistics.mean(a) - statistics.stdev(a)) for a in per_round]
        hi = [100 * (statistics.mean(a) + statistics.stdev(a)) for a in per_round]
        assert min(ys) == pytest.approx(min(lo)) and max(ys) == pytest.approx(max(hi))
        assert set(round(y, 9) for y in lo + hi) <= set(round(y, 9) for y in ys)
    figures.clear()
    one = plan.out / "strategy.name=fedavg__seed=0"
    assert CliRunner().invoke(plot, [str(one), "--out", str(tmp_path / "g"), "--band", "seeds"]).exit_code == 0
    fig = next(f for f, p in figures if p.name == "accuracy_vs_round")
    assert not [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]
    assert "no band: one seed a line" in fig.legends[0].get_title().get_text()


def _fake_sweep(root: Path, strategies: list[str], seeds: list[int]) -> Path:
    """A sweep folder written by hand (no run): a straight accuracy curve per run, the bytes and
    what each rule's messages carry in its summary."""
    runs = []
    for s in strategies:
        for seed in seeds:
            d = root / f"strategy.name={s}__seed={seed}"
            d.mkdir(parents=True)
            sc = {"name": "paper", "seed": seed, "rounds": 10, "strategy": {"name": s},
                  "dataset": {"name": "mnist10k"}, "backbone": {"name": "fmnist_cnn"}, "peers": {"count": 24}}
            (d / "scenario.yaml").write_text(yaml.safe_dump(sc))
            per_peer = 100_000 if s == "bristle" else 1_000_000
            (d / "metrics.jsonl").write_text("".join(json.dumps(
                {"round": r, "group": "honest", "accuracy_mean": 0.5 + 0.04 * r + 0.01 * seed,
                 "accuracy_min": 0.45 + 0.04 * r, "accuracy_max": 0.55 + 0.04 * r,
                 "bytes_sent_per_peer": per_peer, "bytes_sent_total": 24 * per_peer}) + "\n" for r in range(10)))
            (d / "summary.json").write_text(json.dumps(
                {"final_accuracy_mean": 0.86, "exchanges": "output_layer" if s == "bristle" else "full_model"}))
            runs.append({"dir": d.name, "overrides": {"strategy.name": s, "seed": seed}})
    (root / "sweep.json").write_text(json.dumps({"grid": {"strategy.name": strategies, "seed": seeds}, "runs": runs}))
    return root


def test_a_column_wide_size_is_the_saved_figures_width(tmp_path) -> None:
    """--size 3.5,2.6 (a paper's column): every saved figure is at most 3.5 in wide, plus the 0.1 in
    pad on each side of the tight bounding box. Before, the legend's title ran on one line and the
    bytes axis's 'messages: ...' too, and the saved PDFs were 4.9 and 6.35 in wide: shrunk into a
    column, their 8-9 pt text printed at 4-6 pt."""
    import re

    sw = _fake_sweep(tmp_path / "sw", ["fedavg", "median", "krum", "bristle"], [0, 1, 2])
    res = CliRunner().invoke(plot, [str(sw), "--out", str(tmp_path / "f"), "--format", "pdf", "--no-title",
                                    "--size", "3.5,2.6", "--band", "seeds"])
    assert res.exit_code == 0, res.output
    widths = {}
    for f in sorted((tmp_path / "f").glob("*.pdf")):
        box = re.search(rb"/MediaBox \[ *[\d.]+ [\d.]+ ([\d.]+) [\d.]+ *\]", f.read_bytes())
        widths[f.stem] = float(box.group(1)) / 72
    assert set(widths) == {"accuracy_vs_round", "accuracy_vs_bytes"}
    assert all(w <= 3.5 + 0.2 + 0.01 for w in widths.values()), widths


def test_panels_in_rows_share_one_y_label(sweep_dir, tmp_path, figures) -> None:
    """Three attack rows: one y label for the figure, not one per row (each longer than a panel is
    tall at a paper's size, so neighbours' labels overlapped, e.g. the attack matrix at 7,8 in);
    one row keeps its axis label."""
    CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path), "--format", "png", "--size", "7,8"])
    fig = [f for f, p in figures if p.name == "accuracy_vs_round"][0]
    assert len({ax.get_subplotspec().rowspan.start for ax in fig.axes}) == 3
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()] == []
    assert fig._supylabel is not None and fig._supylabel.get_text() == "honest test accuracy (%)"
    figures.clear()
    run = sweep_dir / "strategy.name=fedavg__peers.attack.name=alie__peers.byzantine_fraction=0.2"
    CliRunner().invoke(plot, [str(run), "--out", str(tmp_path / "one"), "--format", "png"])
    fig = [f for f, p in figures if p.name == "accuracy_vs_round"][0]
    assert fig.axes[0].get_ylabel() == "honest test accuracy (%)" and fig._supylabel is None


def test_palette_keeps_ten_lines_apart() -> None:
    """Ten lines: ten distinct colours, each dark enough to read on white (contrast >= 2:1, so no
    Okabe–Ito yellow), and neighbours differ in dash pattern and marker too."""
    from matplotlib.colors import to_rgb

    from fedsim.plot import _style

    def luminance(c: str) -> float:
        lin = [x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in to_rgb(c)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    styles = [_style(i) for i in range(10)]
    assert len({s["color"] for s in styles}) == 10
    assert all(1.05 / (luminance(s["color"]) + 0.05) >= 2.0 for s in styles), [s["color"] for s in styles]
    assert len({s["marker"] for s in styles}) == 10
    for a, b in zip(styles, styles[1:], strict=False):
        assert a["linestyle"] != b["linestyle"]


def test_lines_of_a_figure_differ_in_colour_and_dash(sweep_dir, tmp_path, figures) -> None:
    CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path), "--format", "png"])
    fig = [f for f, p in figures if p.name == "accuracy_vs_round"][0]
    lines = fig.axes[-1].get_lines()  # the last panel: an attack at fraction 0.2
    assert len(lines) == 2  # fedavg, median
    assert lines[0].get_color() != lines[1].get_color() and lines[0].get_linestyle() != lines[1].get_linestyle()


def test_bytes_axis_says_what_each_rule_exchanges(sweep_dir, tmp_path, figures) -> None:
    from fedsim._runs import RunData
    from fedsim.plot import bytes_label

    CliRunner().invoke(plot, [str(sweep_dir), "--out", str(tmp_path), "--format", "png"])
    fig = [f for f, p in figures if p.name == "accuracy_vs_bytes"][0]
    xlabels = {ax.get_xlabel() for ax in fig.axes if ax.get_xlabel()}
    assert xlabels and all(x.endswith("\nmessages: full model (backbone + head)") for x in xlabels), xlabels

    def run(rule: str, summary: dict | None) -> RunData:
        return RunData(tmp_path / rule, {"strategy": {"name": rule}}, [], summary)

    runs = [run("krum", {"exchanges": "full_model"}), run("bristle", None), run("fedavg", {})]  # older summaries
    assert bytes_label(runs, "strategy.name", "MiB") == (
        "bytes sent per peer, cumulative (MiB)\nmessages: krum, fedavg: full model (backbone + head)"
        " · bristle: head only (output layer)"
    )


def _title(data: bytes) -> list[bytes]:
    return [x for x in data.splitlines()[:12] if x.startswith(b"%%Title")]


def test_an_eps_figure_is_titled_as_a_direct_save_titles_it(tmp_path) -> None:
    """The atomic writer handed matplotlib a file handle, so the EPS lost its ``%%Title:`` line
    (matplotlib names the file it saves to); it is now saved to a path of its final name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = _fake_sweep(tmp_path / "sw", ["fedavg", "median"], [0, 1])
    res = CliRunner().invoke(plot, [str(sw), "--out", str(tmp_path / "f"), "--format", "eps"])
    assert res.exit_code == 0, res.output
    fig = plt.figure()
    try:
        (tmp_path / "direct").mkdir()
        fig.savefig(tmp_path / "direct" / "accuracy_vs_round.eps")
    finally:
        plt.close(fig)
    expected = _title((tmp_path / "direct" / "accuracy_vs_round.eps").read_bytes())
    assert expected == [b"%%Title: accuracy_vs_round.eps"]  # what matplotlib writes, saving to the path
    assert _title((tmp_path / "f" / "accuracy_vs_round.eps").read_bytes()) == expected
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["accuracy_vs_bytes.eps", "accuracy_vs_round.eps"]


@pytest.mark.parametrize("fmt", ["eps", "pdf", "svg", "png"])
def test_a_saved_figure_is_the_bytes_of_a_direct_save(tmp_path, monkeypatch, fmt) -> None:
    """Every format's file is what ``savefig`` to its final path writes (dates fixed by
    SOURCE_DATE_EPOCH, as reproducible builds fix them, and SVG ids by svg.hashsalt), through the
    atomic rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim import plot_style

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    monkeypatch.setitem(matplotlib.rcParams, "svg.hashsalt", "fixed")  # else SVG ids are drawn at random
    fig = plt.figure()
    try:
        fig.gca().plot([0, 1], [1, 0])
        (p,) = plot_style._save(fig, tmp_path / "a" / "curve", [fmt])
        (tmp_path / "b").mkdir()
        meta = {"CreationDate": None} if fmt == "pdf" else None
        fig.savefig(tmp_path / "b" / f"curve.{fmt}", format=fmt, metadata=meta, bbox_inches="tight")
    finally:
        plt.close(fig)
    assert p.read_bytes() == (tmp_path / "b" / f"curve.{fmt}").read_bytes()
    assert [x.name for x in (tmp_path / "a").iterdir()] == [f"curve.{fmt}"]  # no temp folder left


def test_over_seeds_says_n_or_its_range() -> None:
    from fedsim.plot_heatmaps import over_seeds

    assert over_seeds([3, 3, 3]) == ", mean ± std over 3 seeds"
    assert over_seeds([2, 3, 2]) == ", mean ± std over 2–3 seeds"
    assert over_seeds([1, 1]) == "" and over_seeds([]) == ""
    assert over_seeds([1, 2]) == ", mean ± std over 1–2 seeds"


def _attack_sweep(root: Path, seeds: dict[tuple[str, str], list[int]]) -> Path:
    """A hand-written sweep, strategy × attack, with ``seeds[(strategy, attack)]`` runs a cell."""
    runs = []
    for (s, a), cell in seeds.items():
        for seed in cell:
            d = root / f"strategy.name={s}__peers.attack.name={a}__seed={seed}"
            d.mkdir(parents=True)
            sc = {"name": "h", "seed": seed, "rounds": 2, "strategy": {"name": s}, "dataset": {"name": "mnist10k"},
                  "backbone": {"name": "fmnist_cnn"}, "peers": {"count": 8, "byzantine": 2, "attack": {"name": a}}}
            (d / "scenario.yaml").write_text(yaml.safe_dump(sc))
            (d / "metrics.jsonl").write_text("".join(json.dumps(
                {"round": r, "group": "honest", "accuracy_mean": 0.5 + 0.01 * seed, "accuracy_min": 0.4,
                 "accuracy_max": 0.6, "bytes_sent_per_peer": 10, "bytes_sent_total": 80}) + "\n" for r in range(2)))
            (d / "summary.json").write_text(json.dumps({"final_accuracy_mean": 0.5 + 0.01 * seed}))
            runs.append({"dir": d.name, "overrides": {"strategy.name": s, "peers.attack.name": a, "seed": seed}})
    grid = {"strategy.name": sorted({s for s, _ in seeds}), "peers.attack.name": sorted({a for _, a in seeds}),
            "seed": sorted({x for v in seeds.values() for x in v})}
    (root / "sweep.json").write_text(json.dumps({"grid": grid, "runs": runs}))
    return root


@pytest.mark.parametrize("uneven", [False, True])
def test_the_heatmap_title_counts_every_cells_seeds(tmp_path, figures, uneven) -> None:
    """Cells over 3, 2, 2 and 2 seeds: "over 2–3 seeds" (it said "over 3 seeds", the largest
    cell's count), in the heatmap's title and the curves' legend note; all over 2: "over 2 seeds"."""
    cells = {(s, a): [0, 1] for s in ("fedavg", "median") for a in ("alie", "sign_flip")}
    if uneven:
        cells[("fedavg", "alie")] = [0, 1, 2]
    sw = _attack_sweep(tmp_path / "sw", cells)
    res = CliRunner().invoke(plot, [str(sw), "--out", str(tmp_path / "f"), "--format", "png"])
    assert res.exit_code == 0, res.output
    (fig,) = [f for f, p in figures if p.name.startswith("heatmap_")]
    assert _suptitle(fig).splitlines()[0] == "sw: final honest accuracy, mean ± std over " + (
        "2–3 seeds" if uneven else "2 seeds"
    )
    # the curves' legend note counts each drawn line's seeds the same way (review: it kept the largest)
    for fig, p in figures:
        if p.name.startswith("accuracy_vs_"):
            title = " ".join(fig.legends[0].get_title().get_text().split())
            assert ("averaged over 2–3 seeds" if uneven else "averaged over 2 seeds") in title, (p.name, title)
