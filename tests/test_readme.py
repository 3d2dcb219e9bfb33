"""README stays true: CI runs the very set-up and test commands README gives, and its Python block runs."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_has_exactly_two_setup_commands():
    cmds = _commands()
    assert len(cmds) == 2
    assert "fedsim run scenarios/quickstart.yaml" in cmds[0] and "torch==2.13.0" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _commands()[0] in ci and _commands()[1] in ci
    assert _commands()[1].startswith(". .venv/bin/activate && "), "must not install into another Python"


def test_ci_runs_the_suites_plain_pytest_leaves_out():
    """Every marker that addopts deselects is selected again by a CI line."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0] for m in opts["markers"]}
    deselected = set(re.findall(r"not (\w+)", opts["addopts"]))
    assert deselected == declared
    ci = (ROOT / ".ci" / "run").read_text()
    line = next(x for x in ci.splitlines() if x.startswith("python -m pytest") and " -m " in x)
    assert set(re.findall(r"\b(\w+)\b", line.rsplit(" -m ", 1)[1])) - {"or"} == declared


def _python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("### From Python (notebooks)", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    return block


@pytest.mark.slow
def test_the_python_block_runs_as_written(tmp_path):
    """README's "From Python" block, pasted as it stands into a fresh interpreter in the checkout
    (Ray, the shipped quickstart): every line runs and means what its comment says. pandas is no
    extra's: without it `to_pandas` must say so in one line (the comment says "with pandas installed")."""
    import importlib.util
    import subprocess
    import sys

    block = _python_block()
    if importlib.util.find_spec("pandas") is None:
        line = "df = r.to_pandas()"
        assert line in block
        block = block.replace(line, "try:\n    r.to_pandas()\nexcept ImportError as e:\n"
                                    "    assert str(e) == 'RunResult.to_pandas needs pandas: pip install pandas'")
    check = """
assert r.complete and len(r.history) == 5 and r.history[-1]["round"] == 4
assert r.scenario.strategy.name == "median" and r.final_params.shape[0] == 24
assert again.history == r.history and set(r.records[-1].phases) >= {"train", "aggregate", "evaluate"}
figs = sorted(p.name for p in (r.dir / "plots").iterdir())
assert figs == ["accuracy_vs_bytes.png", "accuracy_vs_round.png"], figs
"""
    script = tmp_path / "block.py"
    script.write_text(block + "\n" + check)
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # fedsim.run's temporary run folder: here
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
