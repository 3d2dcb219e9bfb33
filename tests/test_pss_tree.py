"""benchmarks/pss_tree.py (the PSS of a run's process tree, sampled from outside): bad arguments are
a one-line error, and a real process tree is sampled until its root exits."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from benchutil import load_benchmark

pss_tree = load_benchmark("pss_tree")


@pytest.mark.parametrize("argv", [[], ["junk"], ["12", "13"], ["-1"]])
def test_bad_arguments_are_a_one_line_error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        pss_tree.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and ": error: " in err and err.count("\n") == 1, err  # (prog: sys.argv[0])


def test_a_pid_that_is_not_running_is_a_one_line_error(capsys):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: its pid is free
    with pytest.raises(SystemExit) as e:
        pss_tree.main([str(p.pid)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.endswith(f": error: argument ROOT_PID: no process {p.pid} (is this Linux, "
                                              "and is the run still going?)\n") and err.count("\n") == 1, err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        pss_tree.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "ROOT_PID" in out and "Peak memory of a process tree" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_it_samples_a_running_tree_until_the_root_exits(capsys):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    threading.Thread(target=p.wait, daemon=True).start()  # reaped when it exits (a zombie stays in /proc)
    pss_tree.main([str(p.pid)])
    out = capsys.readouterr().out
    assert out.startswith("peak PSS ") and "over 1 processes" in out and f"driver (pid {p.pid})" in out
    assert float(out.split()[2]) > 0


pss = load_benchmark("pss")


def _fake_proc(tmp_path, procs):
    """A /proc snapshot: ``procs`` maps pid -> (state, ppid, cmdline, Pss kB)."""
    for pid, (state, ppid, cmd, kb) in procs.items():
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "stat").write_text(f"{pid} (x y) {state} {ppid} 1 1\n")
        (d / "cmdline").write_bytes(cmd.encode() + b"\0")
        if state != "Z":  # a zombie's memory files are empty
            (d / "smaps_rollup").write_text(f"0-1 ---p 0 00:00 0 [rollup]\nRss: {2 * kb} kB\nPss: {kb} kB\n"
                                            f"Pss_Anon: {kb} kB\n")
    (tmp_path / "self").mkdir()
    return str(tmp_path)


def test_a_zombie_is_gone_and_kinds_partition_the_tree(tmp_path):
    proc = _fake_proc(tmp_path, {
        10: ("S", 1, "python", 100), 11: ("S", 10, "ray::PeerGroup.train", 40),
        12: ("R", 10, "ray::PeerGroup.aggregate", 60), 13: ("S", 11, "/x/raylet", 7),
        14: ("Z", 10, "", 0), 15: ("S", 14, "orphan-of-zombie", 5), 99: ("S", 1, "other", 1000),
    })
    assert not pss.alive(14, proc) and pss.alive(10, proc) and not pss.alive(77, proc)
    assert sorted(pss.tree(10, proc)) == [10, 11, 12, 13]
    assert pss.tree(14, proc) == []  # a zombie root: the run is over
    got = pss.by_kind(pss.sample(10, proc))
    assert got == {"driver": 100 << 10, "ray::PeerGroup": 100 << 10, "raylet": 7 << 10}
    assert [p.rss for p in pss.sample(10, proc) if p.pid == 13] == [14 << 10]


def test_kinds_are_reported_at_the_total_peak_and_their_own_peaks_apart(capsys):
    def procs(driver, worker):
        return [pss.Proc(1, "driver", driver, 0, 0, 0, 0), pss.Proc(2, "ray::PeerGroup", worker, 0, 0, 0, 0)]
    peak = pss.Peak()
    for d, w in [(50, 10), (30, 40), (10, 35)]:  # totals 60, 70, 45; driver peaks at 50, worker at 40
        peak.add(procs(d << 20, w << 20))
    assert peak.total == 70 << 20 and peak.by_kind() == {"driver": 30 << 20, "ray::PeerGroup": 40 << 20}
    assert sum(peak.by_kind().values()) == peak.total
    assert peak.own_max == {"driver": 50 << 20, "ray::PeerGroup": 40 << 20}  # 90 MiB: not the peak
    text = pss_tree.report(peak)
    assert "by kind at that sample (MiB, sums to the peak): ray::PeerGroup 40, driver 30" in text
    assert "own peak over the run (MiB, at different moments: not additive): driver 50, ray::PeerGroup 40" in text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_unreaped_child_ends_the_watch():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    peak = pss_tree.watch(p.pid, interval=0.05)  # never reaped while watched: a zombie at the end
    assert p.poll() == 0 and peak.total >= 0
