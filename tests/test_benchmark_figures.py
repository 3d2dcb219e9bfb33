"""The two benchmark figures that draw a row of panels (benchmarks/fedbn_feature_shift.py,
benchmarks/federated_unlearning_figure.py) run on small synthetic run folders and draw through the
one helper, benchmarks/panel_figure.py: y label on the first panel, legend on the last, a PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(monkeypatch):
    """Puts benchmarks/ on sys.path (as running a script does) and records each figure
    ``panel_figure.save`` writes: ``(axes, out)``."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import panel_figure

    calls = []
    real = panel_figure.save

    def spy(fig, axes, out, ylabel, legend_loc):
        real(fig, axes, out, ylabel, legend_loc)
        calls.append((axes, out))

    monkeypatch.setattr(panel_figure, "save", spy)
    return calls


def _main(monkeypatch, script: str, argv: list[str]) -> None:
    import importlib

    mod = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    mod.main()


def _check(calls, out: Path, panels: int, ylabel: str) -> None:
    assert len(calls) == 1
    axes, path = calls[0]
    assert path == out and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(axes) == panels and axes[0].get_ylabel() == ylabel and axes[-1].get_legend() is not None


def test_fedbn_feature_shift_figure(tmp_path, monkeypatch, saved):
    for cond in ("shift", "noshift"):
        for bn in ("exchanged", "local"):
            for s in (0, 1):
                d = tmp_path / "runs" / f"{cond}-{bn}-s{s}"
                d.mkdir(parents=True)
                recs = [{"round": r, "accuracy_mean": 0.5 + 0.1 * r + 0.01 * s,
                         "per_peer": {"0": 0.5 + s / 10, "1": 0.6}} for r in range(3)]
                (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
                (d / "summary.json").write_text("{}")
                (d / "scenario.yaml").write_text(yaml.safe_dump({"peers": {"count": 2},
                                                                 "dataset": {"domains": ["identity", "invert"]}}))
    out = tmp_path / "fig" / "fedbn.png"
    _main(monkeypatch, "fedbn_feature_shift", ["--runs", str(tmp_path / "runs"), "--seeds", "0", "1",
                                               "--out", str(out)])
    _check(saved, out, 2, "own-domain test accuracy, %")


def test_federated_unlearning_figure(tmp_path, monkeypatch, saved):
    rs, arms, hop = [0, 2], ["0", "1"], "1"
    dirs = []
    for s in (0, 1):
        d = tmp_path / f"s{s}"
        d.mkdir()
        entry = {"kind": "federated_unlearning", "rounds_after": rs, "arms": arms,
                 "records": {a: {"rounds": {str(r): {hop: {"canary_membership": {"advantage": 0.1 * r + s / 10,
                                                                                 "null_q95": 0.2}}}
                                            for r in rs}} for a in arms},
                 "retrained_canary_membership": {str(r): {hop: {"advantage": 0.05}} for r in rs}}
        (d / "probes.json").write_text(json.dumps([entry]))
        dirs.append(str(d))
    out = tmp_path / "fig" / "fu.png"
    _main(monkeypatch, "federated_unlearning_figure", ["--runs", "newton=" + ",".join(dirs),
                                                       "--runs", "finetune=" + dirs[0], "--out", str(out)])
    _check(saved, out, 2, "canary membership advantage")
