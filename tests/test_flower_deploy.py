"""Deploying the Flower bridge: the distribution's name (fedsim on PyPI is another project), the
device bundle (a wheel installable without the index knowing fedsim), and the server's
checkpoints with --resume."""

import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

import fedsim

ROOT = Path(__file__).resolve().parent.parent
TAKEN = "fedsim"  # on PyPI: an unrelated project (fedsim 0.9.0 is what `pip install fedsim` gets)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _installs_taken_name(line: str) -> bool:
    """Whether a `pip install ...` on this line names the taken distribution (the arguments up to
    the next &&, |, ;, #, backquote or word of prose)."""
    if "unrelated project" in line:  # the docs saying what not to do
        return False
    for m in re.finditer(r"pip install([^&|;#`\n]*)", line):
        args = re.split(r"\s(?:in|on|or|and|with|for)\s", m.group(1))[0]  # prose after the command
        for tok in args.split():
            if re.fullmatch(rf"{TAKEN}(\[[^\]]*\])?((==|>=|<=|~=|<|>).*)?", tok.strip("\"'")):
                return True
    return False


def test_the_distribution_is_not_the_taken_name_and_every_install_line_uses_it():
    """pyproject's name is fedsim.DISTRIBUTION, not 'fedsim'; extras refer to it; no doc or message
    tells anyone to `pip install fedsim[...]` / `fedsim==...` (that installs the other project)."""
    project = _project()
    assert project["name"] == fedsim.DISTRIBUTION != TAKEN
    for extra, reqs in project["optional-dependencies"].items():
        for r in reqs:
            assert not re.match(rf"{TAKEN}\b(?!-)", r), f"extra {extra!r}: {r!r} names the other project"
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "fedsim").rglob("*.py"))]
    offenders = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in files
                 for i, line in enumerate(f.read_text().splitlines(), 1) if _installs_taken_name(line)]
    assert not offenders, "\n".join(offenders)


def test_the_version_is_written_once():
    """pyproject reads its version from fedsim/version.py (no second copy to forget on a release)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fedsim.version.__version__"}


def test_version_does_not_look_up_a_distribution_name(monkeypatch):
    """`fedsim --version` prints the running code's version, whatever the distribution is called
    (it used to ask importlib.metadata for 'fedsim': a crash once the distribution is fedsim-lab)."""
    from fedsim.cli import main

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"fedsim, version {fedsim.__version__}"


# ---------------------------------------------------------------------- the device bundle
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pytest.importorskip("flwr")
    from fedsim.cli import main

    out = tmp_path_factory.mktemp("bundle") / "device"
    res = CliRunner().invoke(main, ["flower", "bundle", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow  # building the 32 MB wheel: ~10-20 s on the 2-core machine
def test_bundle_writes_wheel_constraints_and_install(bundle):
    from fedsim.flower.project import FLWR_REQUIREMENT

    wheels = list(bundle.glob("*.whl"))
    assert [w.name for w in wheels] == [f"fedsim_lab-{fedsim.__version__}-py3-none-any.whl"]
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "fedsim/flower/client.py" in names and "strategies/__init__.py" in names
    assert "fedsim/flower/fedsim-node.service" in names  # the device's systemd unit (package data)
    assert any(n.startswith("fedsim/data/embedded/") and n.endswith(".npz") for n in names)
    assert not any("__pycache__" in n for n in names)
    pins = dict(line.split("==") for line in (bundle / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert "flwr==" + pins["flwr"] == FLWR_REQUIREMENT
    assert pins["torch"] == importlib.metadata.version("torch").split("+")[0]
    assert pins["numpy"] == importlib.metadata.version("numpy")
    install = (bundle / "INSTALL.txt").read_text()
    assert f'pip install "./{wheels[0].name}[client]" -c constraints.txt' in install
    assert "--index-url https://download.pytorch.org/whl/cpu" in install
    sums = (bundle / "SHA256SUMS").read_text()
    assert wheels[0].name in sums and "constraints.txt" in sums


@pytest.mark.slow
def test_a_device_that_installs_the_bundle_runs_the_servers_code(bundle, tmp_path):
    """The wheel's packages have this tree's code fingerprint (fedsim.codehash), so a device that
    installed the server's bundle passes the ClientApp's check (test_flower_version.py)."""
    from fedsim.codehash import PACKAGES, code_fingerprint, tree_fingerprint

    (wheel,) = bundle.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path, [n for n in z.namelist() if n.endswith(".py")])
    assert tree_fingerprint({name: tmp_path / name for name in PACKAGES}) == code_fingerprint()


@pytest.mark.slow
def test_bundle_wheel_installs_into_a_fresh_venv(bundle, tmp_path):
    """The wheel, installed with --no-deps into a new virtualenv, is fedsim-lab; `import fedsim`
    comes from that venv, its `fedsim` script is there, and the launcher finds its bin directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    wheel = next(bundle.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300, capture_output=True)
    code = ("import fedsim, importlib.metadata as m, fedsim.flower.launch as l; "
            "print(fedsim.__file__); print(m.version('fedsim-lab')); print(l.bin_dir())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the venv's own fedsim
    out = subprocess.run([str(py), "-c", code], check=True, capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env=env).stdout.split()
    assert out[0].startswith(str(venv)) and out[1] == fedsim.__version__ and out[2] == str(venv / "bin")
    assert (venv / "bin" / "fedsim").is_file()


def test_bundle_refuses_bad_input(tmp_path):
    pytest.importorskip("flwr")
    from fedsim.cli import main

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    res = CliRunner().invoke(main, ["flower", "bundle", str(full)])
    assert res.exit_code == 1 and "is not empty" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(main, ["flower", "bundle", str(tmp_path / "o"), "--source", str(tmp_path)])
    assert res.exit_code == 1 and "is not a fedsim source tree" in res.output
    assert len(res.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------- server checkpoints and --resume
def _bridge_run(sc_dict, out, **rc):
    from fedsim.flower import common
    from fedsim.flower.inprocess import run_in_process
    from fedsim.scenario import parse

    sc = common.bridge_scenario(parse(sc_dict))
    nodes = [{"partition-id": i, "num-partitions": sc.peers.count} for i in range(sc.peers.count)]
    return run_in_process({"scenario": common.scenario_yaml(sc), "output-dir": str(out), **rc}, nodes)


@pytest.fixture()
def resumable(small_scenario):
    """5 rounds, a checkpoint every 2 (after rounds 1 and 3), SGD with momentum 0.5: the devices'
    momentum must survive the restart (a resumed run is a new Flower run, context.state empty)."""
    pytest.importorskip("flwr")
    return small_scenario(**{"mode": "federated", "rounds": 5, "topology.kind": "star", "peers.count": 4,
                             "checkpoint.every": 2, "strategy.name": "median"})


def test_resume_after_a_crash_equals_the_uninterrupted_run(resumable, tmp_path, monkeypatch):
    """The ServerApp dies in round 3 (past the checkpoint of round 1, with round 2 evaluated);
    a new ServerApp with resume=true cuts metrics.jsonl back to the checkpoint's 2 lines and runs
    rounds 2..4: metrics.jsonl and the final global head equal those of a run never interrupted."""
    from fedsim import rundir
    from fedsim.flower import server

    _bridge_run(resumable, tmp_path / "whole")

    real = server.FedsimStrategy.configure_train

    def dies_in_round_3(self, server_round, *a, **k):
        if server_round + self.offset == 4:
            raise KeyboardInterrupt("SuperLink killed")
        return real(self, server_round, *a, **k)

    monkeypatch.setattr(server.FedsimStrategy, "configure_train", dies_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        _bridge_run(resumable, tmp_path / "cut")
    cut = tmp_path / "cut"
    # round 2's record waits for round 3's train replies (the devices' piggy-backed scores of its head)
    assert len((cut / "metrics.jsonl").read_text().splitlines()) == 2
    assert rundir.read_checkpoint_meta(cut / "checkpoint.pt")["round"] == 1
    assert not (cut / "summary.json").exists()
    monkeypatch.setattr(server.FedsimStrategy, "configure_train", real)

    summary = _bridge_run(resumable, cut, resume=True)
    whole = tmp_path / "whole"
    assert (cut / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    assert summary["rounds_completed"] == 5
    _, a = rundir.read_checkpoint(whole / "final_global.pt")
    meta, b = rundir.read_checkpoint(cut / "final_global.pt")
    assert meta["round"] == 4 and a["server"]["global"].shape == b["server"]["global"].shape
    assert a["server"]["global"].equal(b["server"]["global"])
    assert len((cut / "timings.jsonl").read_text().splitlines()) == 5


def test_resume_refuses_what_it_cannot_continue(resumable, tmp_path, monkeypatch):
    from fedsim.errors import FedsimError
    from fedsim.flower import server

    out = tmp_path / "out"
    with pytest.raises(FedsimError, match="is not a fedsim run directory .*; nothing to resume"):
        _bridge_run(resumable, out, resume=True)
    real = server.FedsimStrategy.configure_train
    dies_in = [1]

    def dies(self, server_round, *a, **k):
        if server_round + self.offset == dies_in[0]:
            raise KeyboardInterrupt
        return real(self, server_round, *a, **k)

    monkeypatch.setattr(server.FedsimStrategy, "configure_train", dies)
    with pytest.raises(KeyboardInterrupt):  # before the first checkpoint
        _bridge_run(resumable, out)
    with pytest.raises(FedsimError, match="checkpoint.pt does not exist: nothing to resume"):
        _bridge_run(resumable, out, resume=True)
    dies_in[0] = 4
    with pytest.raises(KeyboardInterrupt):  # the directory of a run without results is reused
        _bridge_run(resumable, out)
    monkeypatch.setattr(server.FedsimStrategy, "configure_train", real)
    other = dict(resumable, seed=99)
    with pytest.raises(FedsimError, match="seed was 3, now 99"):
        _bridge_run(other, out, resume=True)
    with pytest.raises(FedsimError, match="saved with run config"):
        _bridge_run(resumable, out, resume=True, **{"attack-side": "server"})
    metrics = out / "metrics.jsonl"
    good = metrics.read_bytes()
    metrics.write_bytes(good.replace(b'"round": 1', b'"round": 9'))
    with pytest.raises(FedsimError, match="are not those the checkpoint recorded"):
        _bridge_run(resumable, out, resume=True)
    metrics.write_bytes(good)
    _bridge_run(resumable, out, resume=True)
    with pytest.raises(FedsimError, match=r"is complete \(summary.json exists\); nothing to resume"):
        _bridge_run(resumable, out, resume=True)
