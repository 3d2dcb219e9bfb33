"""Every benchmark script with a command line answers junk arguments with one line on stderr and
exit status 2, before it runs anything (``benchmarks/_cli.py``: the shared parser and validators).

The scripts run as ``__main__`` one after another in one child process (``runpy``). They parse
their arguments before importing torch, Ray or Flower: ``--help`` and a bad argument import none of
them (each script's new heavy modules are recorded after it runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from benchutil import ROOT, load_benchmark

BENCH = ROOT / "benchmarks"
CASES: list[tuple[str, list[str]]] = [
    ("scale", ["--sizes", "abc"]), ("scale", ["--rounds", "-3"]), ("scale", ["--sizes", "0"]),
    ("scale", ["--cpus-per-actor", "nan"]), ("scale", ["--set", "novalue"]),
    ("bristle_precision", ["--rotations", "0"]),
    ("scale_memory", ["--peers", "0"]), ("floor", ["--sizes", "1,,2"]), ("round_split", ["--rounds", "x"]),
    ("vs_flower", ["--flower-rounds", "5,-1"]), ("vs_flower", ["--sizes", "10", "--flower-rounds", "1,2"]),
    ("vs_flower_whole", ["--rounds", "1"]), ("vs_flower_whole", ["--noise-seeds", "a"]),
    ("whole_model", ["--peers", "2.5"]), ("ray_overhead", ["--clients", "-1"]),
    ("bristle_port", ["--iterations", "0"]), ("bristle_port", ["--set", "novalue"]),
    ("bristle_port", ["--ablate", "nonsense"]),
    ("bristle_peer_diag", ["--scenario", "/nonexistent.yaml"]), ("unlearning_by_hop", ["--damping", "-1"]),
    ("cloning_curve", ["/nonexistent"]), ("fedbn_feature_shift", ["--runs", "/nonexistent"]),
    ("federated_unlearning_figure", ["--runs", "x=/d", "--hop", "one"]),
    ("federated_unlearning_figure", ["--runs", "nolabel"]),
    ("federated_unlearning_seeds", ["/nonexistent"]), ("gossip_colluders_seeds", ["/nonexistent"]),
    ("pss_tree", []), ("pss_tree", ["junk"]), ("pss_tree", ["999999999"]),  # above any pid_max: never running
]

HARNESS = r"""
import contextlib, io, json, runpy, sys
bench = sys.argv[1]
sys.path.insert(0, bench)
out = []
for script, argv in json.loads(sys.argv[2]):
    sys.argv = [script + ".py", *argv]
    err = io.StringIO()
    code = "ran"  # the script parsed the arguments and returned: it ran
    with contextlib.redirect_stderr(err):
        try:
            runpy.run_path(f"{bench}/{script}.py", run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001
            code = f"raised {type(e).__name__}: {e}"
    heavy = [m for m in ("torch", "ray", "flwr") if m in sys.modules]
    out.append([code, err.getvalue(), heavy])
print(json.dumps(out))
"""
HEAVY = {"torch", "ray", "flwr"}  # seconds to import; none of them needed to parse a command line


def _answers(cases: list[tuple[str, list[str]]]) -> list[tuple[object, str, list[str]]]:
    proc = subprocess.run([sys.executable, "-c", HARNESS, str(BENCH), json.dumps(cases)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def answers() -> list[tuple[object, str, list[str]]]:
    return _answers(CASES)


def _with_cli() -> list[str]:
    return sorted(p.stem for p in BENCH.glob("*.py") if "_cli.parser(" in p.read_text())


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{s} {' '.join(a)}" for s, a in CASES])
def test_junk_arguments_are_one_line_and_exit_2(answers, i):
    script, argv = CASES[i]
    code, err, heavy = answers[i]
    assert code == 2, (script, argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}.py: error: ") and "Traceback" not in err, err
    assert not heavy, (script, argv, heavy)  # refused before torch, Ray or Flower is imported


def test_help_imports_no_heavy_module():
    """``python benchmarks/X.py --help`` for every script with a command line: exit 0, usage printed,
    and torch, Ray and Flower never imported (they load after the arguments are parsed)."""
    scripts = _with_cli()
    got = _answers([(s, ["--help"]) for s in scripts])
    for script, (code, _, heavy) in zip(scripts, got, strict=True):
        assert code == 0, (script, code)
        assert not HEAVY & set(heavy), (script, heavy)


def test_every_script_with_a_command_line_uses_the_shared_parser_and_is_covered():
    # (a script that reads sys.argv by hand has a command line too, without the shared parser)
    with_cli = {p.stem for p in BENCH.glob("*.py")
                if re.search(r"ArgumentParser|add_argument|sys\.argv", p.read_text())}
    assert {p.stem for p in BENCH.glob("*.py") if "_cli.parser(" in p.read_text()} == with_cli - {"_cli"}
    assert with_cli - {"_cli"} == {s for s, _ in CASES}


def test_validators():
    cli = load_benchmark("_cli")
    assert cli.counts("100,1000") == [100, 1000] and cli.count("7") == 7 and cli.indices("0,2") == [0, 2]
    assert cli.index("0") == 0 and cli.positive("0.5") == 0.5 and cli.key_value("a.b=1") == "a.b=1"
    for fn, bad in [(cli.counts, "0"), (cli.counts, ""), (cli.count, "1,2"), (cli.indices, "-1"), (cli.index, "x"),
                    (cli.positive, "0"), (cli.positive, "inf"), (cli.positive, "nan"), (cli.nonnegative, "-1"),
                    (cli.key_value, "=1"), (cli.key_value, "a")]:
        with pytest.raises(cli.argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            fn(bad)
