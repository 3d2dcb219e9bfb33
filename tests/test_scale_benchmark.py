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


def test_scale_memory_runs_and_lists_half_precision_heads(tmp_path):
    """benchmarks/scale_memory.py end to end (it once stopped with an AttributeError, scale.scenario
    reading an argument it did not pass): ``--head-dtype float16`` halves the stored heads it lists."""

    def held(dtype: str) -> dict[str, float]:
        p = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "scale_memory.py"), "--peers", "400", "--rounds", "1",
             "--num-actors", "1", "--head-dtype", dtype],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        assert p.returncode == 0, p.stderr[-2000:]
        assert f"heads {dtype}" in p.stdout and "# peak RSS over the rounds" in p.stdout
        rows = [line.split() for line in p.stdout.splitlines() if line.startswith("  group 0 ")]
        return {r[2]: float(r[3]) for r in rows if len(r) == 4}

    full, half = held("float32"), held("float16")
    assert full["w"] == 2 * half["w"] > 0 and full["opt.m_w"] == 2 * half["opt.m_w"]


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


def test_vs_flower_local_parallel_option_reaches_the_in_process_run_only(tmp_path, monkeypatch):
    """``vs_flower.py --local-parallel``: the in-process run's ``engine.local_parallel``; the Ray run
    keeps its scenario (the option is an in-process layout); not given, the scenario's default."""
    from fedsim.scenario import parse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import vs_flower

    seen: list[dict] = []
    monkeypatch.setattr(vs_flower, "timed_run", lambda sc, run_dir: seen.append(sc["engine"]) or {})
    for given, want in ((["--local-parallel", "auto"], "auto"), (["--local-parallel", "off"], "off"), ([], None)):
        a = vs_flower._args(["--sizes", "100", "--flower-rounds", "2", "--rounds", "2", *given])
        vs_flower.run_fedsim(100, 2, tmp_path, "local", a.local_parallel)
        vs_flower.run_fedsim(100, 2, tmp_path, "ray", a.local_parallel)
        local, ray = seen[-2:]
        assert local.get("local_parallel") == want and "local_parallel" not in ray
        d = vs_flower.fedsim_scenario(100, 2, "local", tmp_path, local_parallel=a.local_parallel)
        assert parse(d).engine.local_parallel == (want or "off")
