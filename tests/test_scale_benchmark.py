"""benchmarks/scale.py end to end on a tiny federation (in-process): it prints its table and per-kind
line and writes its JSON (its report code ran after a 28-minute 100,000-peer run, and once failed
there on a renamed key)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scale_runs_end_to_end_and_reports(tmp_path):
    out = tmp_path / "scale.json"
    p = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--sizes", "20", "--rounds", "2", "--backend", "local",
         "--skip-breakdown", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert "PSS by process kind at the total peak" in p.stdout
    rows = json.loads(out.read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    (r,) = rows
    assert r["peers"] == 20 and 0 < r["accuracy_mean"] <= 1
    assert abs(sum(r["pss_by_kind_at_peak_gb"].values()) - r["peak_pss_all_gb"]) < 0.01  # a partition of the peak


def test_local_parallel_option_reaches_the_scenario(tmp_path, monkeypatch):
    from fedsim.scenario import parse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import scale

    for given, want in ((["--local-parallel", "auto"], "auto"), (["--local-parallel", "off"], "off"), ([], None)):
        a = scale._args(["--backend", "local", *given])
        a.replicate_path = None
        d = scale.scenario(20, 2, a, "bristle", tmp_path)
        assert d["engine"].get("local_parallel") == want
        assert parse(d).engine.local_parallel == (want or "off")
