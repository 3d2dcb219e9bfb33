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
def test_bad_arguments_are_a_one_line_usage_error(argv):
    with pytest.raises(SystemExit, match=r"^usage: pss_tree.py ROOT_PID") as e:
        pss_tree.main(argv)
    assert "\n" not in str(e.value.code)


def test_a_pid_that_is_not_running_is_a_one_line_error():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()  # reaped: its pid is free
    with pytest.raises(SystemExit, match=rf"^pss_tree.py: no process {p.pid} "):
        pss_tree.main([str(p.pid)])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_it_samples_a_running_tree_until_the_root_exits(capsys):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
    threading.Thread(target=p.wait, daemon=True).start()  # reaped when it exits (a zombie stays in /proc)
    pss_tree.main([str(p.pid)])
    out = capsys.readouterr().out
    assert out.startswith("peak PSS ") and "over 1 processes" in out and f"driver (pid {p.pid})" in out
    assert float(out.split()[2]) > 0
