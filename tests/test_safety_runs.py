"""Run directories that cannot be turned against the user (issue 13): names that are plain
identifiers, deletes confined to directories fedsim made, one process per run directory,
checkpoints that run no code and resume only what they belong to, metrics as strict JSON."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from fedsim import rundir
from fedsim.cli import main
from fedsim.errors import CorruptFileError, FedsimError, ResumeMismatchError, RunDirExistsError
from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse

CKPT = dict(rounds=8, **{"checkpoint.every": 3})


def _metrics(d: Path) -> bytes:
    return (d / "metrics.jsonl").read_bytes()


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _full(small_scenario, **over) -> Path:
    """An uninterrupted run: the reference a resumed run must equal to the byte."""
    r = Run(parse(small_scenario(name="full", **(CKPT | over))))
    r.create_dir()
    r.execute()
    return r.dir


def _stopped(small_scenario, name: str = "part", **over) -> Run:
    """A run 'killed' after round 4 (its last checkpoint: after round 2, 3 metrics lines)."""
    r = Run(parse(small_scenario(name=name, **(CKPT | over))))
    r.create_dir()
    assert r.execute(stop_after=4) == {"stopped_after": 4}
    assert (r.dir / "checkpoint.pt").exists() and len(_metrics(r.dir).splitlines()) == 5
    return r


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _cli(args: list[str], cwd: Path | None = None):
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(main, args, catch_exceptions=False)
    finally:
        os.chdir(old)


def _error_line(res) -> str:
    out = res.output.strip()
    assert res.exit_code != 0, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    return out


# ----------------------------------------------------------------------------- names and deletes
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "-rf", ".hidden", "a\\b", ""])
def test_run_name_must_be_a_plain_identifier(name):
    with pytest.raises(ScenarioError, match="name"):
        parse({"name": name})


def test_name_dotdot_with_overwrite_deletes_nothing(small_scenario, tmp_path):
    """`--set name=.. --overwrite` once removed the working directory (runs/.. = cwd)."""
    work = tmp_path / "work"
    work.mkdir()
    sentinel = work / "my_sources.py"
    sentinel.write_text("precious")
    path = _write_yaml(work / "s.yaml", small_scenario(**{"output.dir": "runs"}))
    (work / "runs" / "old").mkdir(parents=True)
    (work / "runs" / "old" / "keep.txt").write_text("a run")
    for name in ("..", "."):
        res = _cli(["run", str(path), "--set", f"name={name}", "--overwrite", "-q"], cwd=work)
        assert "name" in _error_line(res)
    assert sentinel.read_text() == "precious" and (work / "runs" / "old" / "keep.txt").exists()


def test_overwrite_refuses_a_directory_fedsim_did_not_make(small_scenario, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8 precious")
    path = _write_yaml(tmp_path / "s.yaml", small_scenario())
    res = _cli(["run", str(path), "--out", str(foreign), "--overwrite", "-q"])
    assert "not a fedsim run directory" in _error_line(res)
    assert (foreign / "holiday.jpg").read_bytes() == b"\xff\xd8 precious"
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]  # nothing written into it either


def test_resume_of_a_folder_that_is_no_run_says_so(tmp_path):
    """`--resume DIR` and `fedsim.resume(DIR)` read DIR/scenario.yaml first, so a folder that is no
    run said 'DIR/scenario.yaml: no such file'; now the line open_for_resume always meant to give."""
    (tmp_path / "notes.txt").write_text("not a run")
    line = _error_line(_cli(["run", "--resume", str(tmp_path)]))
    assert f"{tmp_path} is not a fedsim run directory (no scenario.yaml); nothing to resume" in line
    from fedsim.api import resume

    with pytest.raises(FedsimError, match="is not a fedsim run directory"):
        resume(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing written


def test_overwrite_refuses_cwd_its_parents_and_output_dir(small_scenario, tmp_path):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    sentinel = work / "keep.txt"
    sentinel.write_text("x")
    data = small_scenario(**{"output.dir": str(work / "runs")})
    path = _write_yaml(tmp_path / "s.yaml", data)
    # made to look like a run directory: the path checks must hold on their own
    for d in (work, work / "runs"):
        d.mkdir(exist_ok=True)
        (d / rundir.MARKER).write_text("")
    for out, cwd, what in ((".", work, "working directory"), ("..", work / "sub", "working directory"),
                           (str(work / "runs"), None, "output.dir"), (str(work), None, "output.dir")):
        res = _cli(["run", str(path), "--out", out, "--overwrite", "-q"], cwd=cwd)
        assert what in _error_line(res)
    assert sentinel.exists() and (work / "sub").is_dir()


def test_overwrite_of_a_run_directory_still_works(small_scenario):
    r = Run(parse(small_scenario(rounds=2)))
    r.create_dir()
    r.execute()
    with pytest.raises(RunDirExistsError, match="--overwrite"):
        Run(parse(small_scenario(rounds=2))).create_dir()
    again = Run(parse(small_scenario(rounds=2)))
    again.create_dir(overwrite=True)
    assert not (again.dir / "summary.json").exists() and (again.dir / rundir.MARKER).exists()


def test_a_run_that_fails_at_start_does_not_force_overwrite(small_scenario, monkeypatch):
    import fedsim.runner as runner

    sc = parse(small_scenario())
    r = Run(sc)
    r.create_dir()

    def broken_prepare(*a, **k):
        raise RuntimeError("dataset unreadable")

    monkeypatch.setattr(runner, "prepare", broken_prepare)
    with pytest.raises(RuntimeError, match="dataset unreadable"):
        r.execute()
    monkeypatch.undo()
    again = Run(sc)
    again.create_dir()  # no --overwrite needed: nothing was produced there
    again.execute()
    assert (again.dir / "summary.json").exists()


# ----------------------------------------------------------------------------- one process per run
def test_a_second_run_or_resume_of_a_busy_directory_is_refused(small_scenario):
    first = _stopped(small_scenario)
    before = _metrics(first.dir)
    holder = Run(first.sc, first.dir)
    holder.open_for_resume()  # a resume in progress holds the lock
    with pytest.raises(rundir.RunLockedError, match="in use") as e:
        Run(first.sc, first.dir).execute(resume=True)
    _one_line(e.value)
    with pytest.raises(rundir.RunLockedError):
        Run(first.sc, first.dir).create_dir(overwrite=True)
    assert _metrics(first.dir) == before and (first.dir / "checkpoint.pt").exists()
    holder.execute(resume=True)  # the holder goes on; the lock is released at the end
    Run(first.sc, first.dir).create_dir(overwrite=True)


def test_lock_is_refused_across_processes(small_scenario):
    r = Run(parse(small_scenario()))
    r.create_dir()  # this process holds the lock
    code = (
        "import sys; from fedsim.rundir import DirLock, RunLockedError; from pathlib import Path\n"
        "try:\n    DirLock(Path(sys.argv[1])).acquire()\nexcept RunLockedError as e:\n    print(e); sys.exit(3)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(r.dir)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and f"pid {os.getpid()}" in res.stdout, res.stdout + res.stderr


def test_stale_temp_files_are_removed_on_resume(small_scenario):
    r = _stopped(small_scenario)
    stale = [r.dir / ".checkpoint.pt.k1ll3d.tmp", r.dir / ".metrics.jsonl.abc.tmp", r.dir / ".write-test"]
    for p in stale:
        p.write_bytes(b"x" * 4096)
    keep = r.dir / "notes.txt"
    keep.write_text("mine")
    Run(r.sc, r.dir).execute(resume=True)
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"
    assert not list(r.dir.glob(".*.tmp"))


# ----------------------------------------------------------------------------- safe loading
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _wrapped(payload: bytes) -> bytes:
    """A checkpoint whose header and checksum are right around ``payload`` (only weights_only stops it)."""
    meta = {"format": 1, "round": 2, "metrics_lines": 3, "metrics_sha256": "", "scenario": {}, "scenario_sha256": ""}
    body = json.dumps(meta).encode() + b"\n" + payload
    return rundir.CHECKPOINT_MAGIC + f" 1 {hashlib.sha256(body).hexdigest()}\n".encode() + body


@pytest.mark.parametrize("kind", ["pickle", "torch_save", "wrapped_torch_save"])
def test_a_planted_checkpoint_runs_no_code(small_scenario, tmp_path, kind):
    r = _stopped(small_scenario)
    marker = tmp_path / f"pwned-{kind}"
    evil = {"round": 2, "metrics_lines": 3, "groups": [_Evil(marker)], "server": None}
    if kind == "pickle":
        data = pickle.dumps(evil)
    else:
        import io

        buf = io.BytesIO()
        torch.save(evil, buf)
        data = buf.getvalue() if kind == "torch_save" else _wrapped(buf.getvalue())
    (r.dir / "checkpoint.pt").write_bytes(data)
    with pytest.raises(CorruptFileError, match="checkpoint.pt") as e:
        Run(r.sc, r.dir).execute(resume=True)
    _one_line(e.value)
    assert not marker.exists()
    assert "cannot be used" in Run(r.sc, r.dir).rundir.resume_hint() or kind == "wrapped_torch_save"
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["bit_flip", "truncated", "empty"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(small_scenario, damage):
    r = _stopped(small_scenario)
    p = r.dir / "checkpoint.pt"
    data = bytearray(p.read_bytes())
    if damage == "bit_flip":
        data[len(data) * 2 // 3] ^= 0x10
    elif damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    p.write_bytes(bytes(data))
    before = _metrics(r.dir)
    with pytest.raises(CorruptFileError, match=str(p)) as e:
        Run(r.sc, r.dir).execute(resume=True)
    _one_line(e.value)
    assert _metrics(r.dir) == before  # nothing run, nothing cut


# ----------------------------------------------------------------------------- resume what was run
def test_resume_refuses_an_edited_scenario_yaml(small_scenario, tmp_path):
    r = _stopped(small_scenario)
    p = r.dir / "scenario.yaml"
    data = yaml.safe_load(p.read_text())
    data["seed"] = 9
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    before = _metrics(r.dir)
    res = _cli(["run", "--resume", str(r.dir), "-q"])
    line = _error_line(res)
    assert "seed was 3, now 9" in line and "checkpoint.pt" in line
    assert _metrics(r.dir) == before


def test_resume_refuses_set_but_allows_engine(small_scenario):
    full = _full(small_scenario)
    r = _stopped(small_scenario)
    before = _metrics(r.dir)
    res = _cli(["run", "--resume", str(r.dir), "--set", "seed=9", "-q"])
    assert "--set seed" in _error_line(res)
    res = _cli(["run", "--resume", str(r.dir), "--set", "rounds=40", "-q"])
    assert "--set rounds" in _error_line(res)
    assert _metrics(r.dir) == before and not (r.dir / "summary.json").exists()
    # where it runs may change: another actor layout resumes the same peers to the same bytes
    res = _cli(["run", "--resume", str(r.dir), "--set", "engine.num_actors=3", "-q"])
    assert res.exit_code == 0, res.output
    assert _metrics(r.dir) == _metrics(full)
    assert json.loads((r.dir / "summary.json").read_text())["resumed_after_round"] == 2


def test_resume_of_a_local_run_refuses_an_address(small_scenario):
    """`--resume DIR --address X` of a run on the local backend ignored the address."""
    r = _stopped(small_scenario)
    assert yaml.safe_load((r.dir / "scenario.yaml").read_text())["engine"]["backend"] == "local"
    before = _metrics(r.dir)
    line = _error_line(_cli(["run", "--resume", str(r.dir), "--address", "auto", "-q"]))
    assert "engine.address: used only by backend ray (this engine is local)" in line, line
    assert _metrics(r.dir) == before and not (r.dir / "summary.json").exists()


def test_resume_refuses_a_scenario_that_differs_from_the_run_directory(small_scenario):
    r = _stopped(small_scenario)
    with pytest.raises(ResumeMismatchError, match="scenario.yaml differs.*training.lr") as e:
        Run(parse(small_scenario(name="part", **CKPT, **{"training.lr": 0.5})), r.dir).execute(resume=True)
    _one_line(e.value)


@pytest.mark.parametrize("damage", ["shorter", "edited"])
def test_resume_refuses_metrics_that_are_not_the_checkpoints(small_scenario, damage):
    r = _stopped(small_scenario)
    p = r.dir / "metrics.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    if damage == "shorter":  # the checkpoint (after round 2) counted 3 lines
        p.write_bytes(b"".join(lines[:2]))
    else:
        rec = json.loads(lines[1])
        rec["train_loss"] += 1.0
        p.write_bytes(lines[0] + (json.dumps(rec, sort_keys=True) + "\n").encode() + b"".join(lines[2:]))
    before = p.read_bytes()
    with pytest.raises(ResumeMismatchError, match="metrics.jsonl") as e:
        Run(r.sc, r.dir).execute(resume=True)
    _one_line(e.value)
    assert p.read_bytes() == before


def test_resume_tolerates_a_torn_last_timings_line(small_scenario):
    full = _full(small_scenario)
    r = _stopped(small_scenario)
    with open(r.dir / "timings.jsonl", "a") as f:
        f.write('{"round": 5, "sec')  # killed mid-write
    Run(r.sc, r.dir).execute(resume=True)
    assert _metrics(r.dir) == _metrics(full)
    rounds = [json.loads(x)["round"] for x in (r.dir / "timings.jsonl").read_text().splitlines()]
    assert rounds == list(range(8))


def test_resuming_a_finished_run_says_so(small_scenario):
    r = Run(parse(small_scenario(rounds=2)))
    r.create_dir()
    r.execute()
    before = (r.dir / "summary.json").read_bytes()
    res = _cli(["run", "--resume", str(r.dir), "-q"])
    assert "complete" in _error_line(res)
    assert (r.dir / "summary.json").read_bytes() == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_unwritable_run_directory_on_resume_is_one_line(small_scenario, monkeypatch, code):
    import tempfile

    r = _stopped(small_scenario)

    def fail(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", fail)
    # the resume's first write: versions.json (this start's oneMKL branch) or metrics.jsonl
    with pytest.raises(FedsimError, match=rf"(versions\.json|metrics\.jsonl): {os.strerror(code)}") as e:
        Run(r.sc, r.dir).execute(resume=True)
    assert isinstance(e.value, OSError)
    _one_line(e.value)


def test_disk_full_while_checkpointing_is_one_line_and_resumable(small_scenario, monkeypatch):
    import tempfile

    full = _full(small_scenario)
    sc = parse(small_scenario(name="part", **CKPT))
    r = Run(sc)
    r.create_dir()
    real, calls = tempfile.mkstemp, []

    def full_disk(*a, **k):
        calls.append(k.get("prefix", ""))
        if sum(c.startswith(".checkpoint.") for c in calls) == 2:  # the second checkpoint (after round 5)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "mkstemp", full_disk)
    with pytest.raises(FedsimError, match="checkpoint.pt: No space left on device") as e:
        r.execute()
    _one_line(e.value)
    monkeypatch.undo()
    Run(sc, r.dir).execute(resume=True)
    assert _metrics(r.dir) == _metrics(full)


# ----------------------------------------------------------------------------- strict JSON
def _strict(line: bytes) -> dict:
    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_nonfinite_metrics_are_null_with_a_flag(small_scenario, monkeypatch):
    """A diverged run (issue 13: weight_decay=1e30 wrote bare NaN; validation now refuses that value,
    so the divergence is forced here: NaN train loss, ±inf test loss and accuracy)."""
    from fedsim.peers import PeerGroup
    from fedsim.simulation import Simulation

    train, evaluate = PeerGroup.train, Simulation.evaluate
    monkeypatch.setattr(PeerGroup, "train", lambda self, *a: (train(self, *a)[0], float("nan")))
    monkeypatch.setattr(Simulation, "evaluate", lambda self, *a: evaluate(self, *a)
                        | {"test_loss": float("inf"), "accuracy_mean": float("-inf")})
    r = Run(parse(small_scenario(rounds=3, **{"evaluation.every": 2})))
    r.create_dir()
    r.execute()
    recs = [_strict(x) for x in _metrics(r.dir).splitlines()]
    evaluated = ["accuracy_mean", "test_loss", "train_loss"]  # rounds 1 and 2 (the last) are evaluated
    assert [x["nonfinite"] for x in recs] == [["train_loss"], evaluated, evaluated]
    assert all(x[k] is None for x in recs for k in x["nonfinite"])
    summary = json.loads((r.dir / "summary.json").read_text(), parse_constant=lambda t: pytest.fail(t))
    assert summary["final_accuracy_mean"] is None


def test_metrics_line_never_writes_bare_nan():
    line = rundir.metrics_line({"round": 0, "train_loss": float("nan"), "acc": float("inf"), "per_peer": {"1": 0.5}})
    assert _strict(line) == {"round": 0, "train_loss": None, "acc": None, "per_peer": {"1": 0.5},
                             "nonfinite": ["acc", "train_loss"]}


def test_json_safe_is_the_one_sanitiser():
    """summary.json and probes.json go through one sanitiser: numpy scalars (a NaN float32 too)
    become Python numbers or null, tuples lists, keys strings; the probes' records use it."""
    import numpy as np

    from fedsim import probes

    got = rundir.json_safe({1: (np.float32("nan"), np.int64(3), np.float64(0.1)), "a": {"b": np.float32(2.5)}})
    assert got == {"1": [None, 3, 0.1], "a": {"b": 2.5}}
    assert json.dumps(got, allow_nan=False) == '{"1": [null, 3, 0.1], "a": {"b": 2.5}}'
    assert probes._plain is rundir.json_safe


def test_atomic_file_keeps_the_old_content_on_an_error(tmp_path):
    path = tmp_path / "f.npz"
    path.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError), rundir.atomic_file(path) as fh:
        fh.write(b"part of the new")
        1 / 0  # noqa: B018
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]
    with rundir.atomic_file(path) as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]


# ----------------------------------------------------------------------------- real kills
_HOOKED_CLI = """
import os, sys, time
from pathlib import Path

pause_at, paused = int(os.environ["PAUSE_AT_CHECKPOINT"]), Path(os.environ["PAUSED_FILE"])
real_fsync, seen = os.fsync, []


def fsync(fd):
    # the n-th checkpoint write stops here: its temp file written, not yet renamed over checkpoint.pt
    try:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        name = ""
    if name.startswith(".checkpoint.pt."):
        seen.append(name)
        if len(seen) == pause_at:
            paused.write_text(name)
            time.sleep(600)
    return real_fsync(fd)


os.fsync = fsync
from fedsim.cli import main

main(sys.argv[1:], prog_name="fedsim")
"""


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="the hook finds the file being synced in /proc")
def test_sigkill_at_seeded_moments_including_checkpoint_writes_then_resume(small_scenario, tmp_path):
    """The driver is SIGKILLed (a real subprocess): during a checkpoint write (its temp file written,
    the rename not done) and after a metrics line, each at a seeded-random point; `fedsim run --resume`
    continues from the last complete checkpoint to the bytes of an uninterrupted run."""
    rounds, every = 30, 2
    ref = _full(small_scenario, rounds=rounds, **{"checkpoint.every": every})
    rng = random.Random(13)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    trials = [("checkpoint", rng.randint(2, 10)), ("checkpoint", rng.randint(2, 10)), ("metrics", rng.randint(3, 24))]
    for i, (where, at) in enumerate(trials):
        name = f"victim{i}"
        path = _write_yaml(tmp_path / f"{name}.yaml", small_scenario(name=name, rounds=rounds,
                                                                      **{"checkpoint.every": every}))
        d = Path(small_scenario()["output"]["dir"]) / name
        paused = tmp_path / f"paused{i}"
        pause_at = at if where == "checkpoint" else 10**9
        hook_env = env | {"PAUSE_AT_CHECKPOINT": str(pause_at), "PAUSED_FILE": str(paused)}
        proc = subprocess.Popen([sys.executable, "-c", _HOOKED_CLI, "run", str(path), "-q"], env=hook_env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if where == "checkpoint":
            _kill_when(proc, paused.exists)
            orphan = d / paused.read_text()
            assert orphan.exists(), "the kill should leave the half-done checkpoint's temp file"
            expect = (at - 1) * every - 1  # the checkpoint before the interrupted one
        else:
            metrics = d / "metrics.jsonl"
            _kill_when(proc, lambda m=metrics, n=at: m.exists() and len(m.read_bytes().splitlines()) >= n)
            expect = None  # wherever the last checkpoint before the kill was
        res = subprocess.run([sys.executable, "-m", "fedsim.cli", "run", "--resume", str(d), "-q"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert _metrics(d) == _metrics(ref), f"trial {i}: killed {where} {at}"
        assert not list(d.glob(".*.tmp")), "resume removes the killed write's temp file"
        after = json.loads((d / "summary.json").read_text())["resumed_after_round"]
        assert after is not None and after % every == every - 1
        if expect is not None:
            assert after == expect


def test_a_disk_filling_during_the_checkpoints_tensors_is_one_line(tmp_path):
    """The file size limit reached inside torch.save (a disk filling mid-checkpoint): the one-line
    RunWriteError naming the file, the previous checkpoint kept, no temp file left (torch's zip
    writer swallows the OSError and fails its own position check: that was "internal error:
    RuntimeError ... unexpected pos")."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import resource, signal, torch
        from pathlib import Path
        from fedsim import rundir
        p = Path({str(tmp_path / "checkpoint.pt")!r})
        rundir.write_checkpoint(p, {{"round": 1}}, {{"w": torch.zeros(10)}})
        kept = p.read_bytes()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))
        try:
            rundir.write_checkpoint(p, {{"round": 2}}, {{"w": torch.randn(100000)}})
        except Exception as e:
            print(type(e).__name__, "|", e)
        print(p.read_bytes() == kept, sorted(x.name for x in p.parent.iterdir()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()
    assert first.startswith("RunWriteError | ") and "checkpoint" in first and "File too large" in first, first
    assert second == "True ['checkpoint.pt']"
