"""README's two set-up commands stay true: CI runs the very test command README gives."""

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
