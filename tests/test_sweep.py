"""`fedsim sweep`: grid parsing and expansion, folder names, the YAML `sweep:` section, resuming a
killed sweep (only the missing runs run again; a checkpointed run resumes to the same bytes),
and the Ray path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fedsim.runner import Run
from fedsim.scenario import ScenarioError, parse
from fedsim.sweep import sweep
from fedsim.sweep_execute import execute_sweep
from fedsim.sweep_plan import (
    expand,
    parse_grid,
    plan_sweep,
    read_scenario_with_sweep,
    run_name,
    split_values,
)


def tiny(tmp: Path, **extra) -> dict:
    d = {
        "name": "tiny",
        "dataset": {"name": "sklearn_digits"},
        "backbone": {"name": "identity", "cache_dir": str(tmp / "cache")},
        "peers": {"count": 6},
        "topology": {"kind": "k_regular", "degree": 2},
        "rounds": 3,
        "training": {"lr": 0.05, "momentum": 0.5, "batch_size": 16, "local_steps": 2},
        "engine": {"backend": "local", "num_actors": 1},
    }
    d.update(extra)
    return d


def write(tmp: Path, data: dict, name: str = "s.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def test_parse_grid_values_and_brackets() -> None:
    g = parse_grid(["strategy.name=fedavg,krum", "peers.byzantine_fraction=0.1, 0.3", "training.lr=1e-3,2"])
    assert g == {"strategy.name": ["fedavg", "krum"], "peers.byzantine_fraction": [0.1, 0.3], "training.lr": [1e-3, 2]}
    assert split_values("a,[1,2],{x: 1, y: 2}") == ["a", "[1,2]", "{x: 1, y: 2}"]
    assert parse_grid(["strategy.params={f: 1},{f: 2}"]) == {"strategy.params": [{"f": 1}, {"f": 2}]}
    with pytest.raises(ValueError):
        parse_grid(["strategy.name"])


def test_expand_is_cartesian_in_grid_order() -> None:
    runs = expand({"strategy.name": ["fedavg", "krum"], "seed": [0, 1, 2]})
    assert len(runs) == 6
    assert runs[0] == {"strategy.name": "fedavg", "seed": 0} and runs[-1] == {"strategy.name": "krum", "seed": 2}
    assert run_name({"strategy.name": "krum", "peers.byzantine_fraction": 0.3, "seed": 1}) == (
        "strategy.name=krum__peers.byzantine_fraction=0.3__seed=1"
    )
    assert run_name({"strategy.params": {"f": 1, "m": 2}}) == "strategy.params=f-1,m-2"
    assert run_name({}) == "base"
    long = run_name({"k" * 150: "v" * 100})
    assert len(long) <= 200 and long == run_name({"k" * 150: "v" * 100})


def test_empty_values_get_readable_distinct_folder_names(tmp_path) -> None:
    """``{}`` (and an empty list or string) once gave a folder ending in ``params=``."""
    assert run_name({"strategy.params": {}}) == "strategy.params=empty"
    assert run_name({"x": []}) == "x=empty-list" and run_name({"x": ""}) == "x=empty-string"
    assert run_name({"p": {"a": {}}}) == "p=a-empty"
    grid = parse_grid(["strategy.params={},{beta: 0.2}"])
    assert grid == {"strategy.params": [{}, {"beta": 0.2}]}
    plan = plan_sweep(write(tmp_path, tiny(tmp_path, strategy={"name": "trimmed_mean"})), grid, out=tmp_path / "o")
    assert [r.name for r in plan.runs] == ["strategy.params=empty", "strategy.params=beta-0.2"]


def test_yaml_sweep_section_is_removed_and_merged_with_cli(tmp_path) -> None:
    data = tiny(tmp_path, sweep={"strategy.name": ["fedavg", "local"], "peers": {"count": [6, 8]}})
    path = write(tmp_path, data)
    base, grid = read_scenario_with_sweep(path)
    assert "sweep" not in base and grid == {"strategy.name": ["fedavg", "local"], "peers.count": [6, 8]}
    parse(base)  # the rest is a valid scenario
    plan = plan_sweep(path, {"peers.count": [6], "seed": [0, 1]}, {"rounds": 2}, tmp_path / "out")
    assert [r.name for r in plan.runs][:2] == [
        "strategy.name=fedavg__peers.count=6__seed=0",
        "strategy.name=fedavg__peers.count=6__seed=1",
    ]
    assert len(plan.runs) == 4 and all(r.data["rounds"] == 2 for r in plan.runs)
    assert all(r.data["engine"]["backend"] == "local" for r in plan.runs)


def test_invalid_combinations_fail_or_are_skipped(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    grid = {"peers.attack.name": ["none", "sign_flip"], "peers.byzantine_fraction": [0.0, 0.2]}
    with pytest.raises(ScenarioError, match="skip-invalid"):
        plan_sweep(path, grid, out=tmp_path / "o")
    plan = plan_sweep(path, grid, out=tmp_path / "o", skip_invalid=True)
    assert len(plan.runs) == 2 and [n for n, _, _ in plan.invalid] == [
        "peers.attack.name=none__peers.byzantine_fraction=0.2",
        "peers.attack.name=sign_flip__peers.byzantine_fraction=0",  # an attack with nobody to carry it out
    ]


def test_typos_in_the_grid_are_errors_even_with_skip_invalid(tmp_path) -> None:
    """strategy.name=bulyn is a typo in every combination: an error naming the axis, the value and
    the closest name, never a skipped combination (issue 16, item 3)."""
    path = write(tmp_path, tiny(tmp_path, sweep={"partition.kind": ["iid", "dirichlt"]}))
    grid = {"strategy.name": ["krum", "bulyn"], "peers.attack.name": ["alie", "sign_flp"],
            "strategy.params.includ_own": [True]}
    with pytest.raises(ScenarioError) as e:
        plan_sweep(path, grid, out=tmp_path / "o", skip_invalid=True)
    errs = e.value.errors
    assert len(errs) == 4, errs
    assert errs[0].endswith("sweep partition.kind=dirichlt: got 'dirichlt' (did you mean 'dirichlet'?); "
                            "input should be 'iid', 'dirichlet', 'classes', 'windows' or 'quantity'"), errs[0]
    assert "sweep strategy.name=bulyn: unknown strategy 'bulyn' (did you mean 'bulyan'?)" in errs[1]
    assert "sweep peers.attack.name=sign_flp: unknown attack 'sign_flp' (did you mean 'sign_flip'?)" in errs[2]
    assert "sweep strategy.params.includ_own=true: strategy.params: unknown parameter 'includ_own'" in errs[3]
    assert "(did you mean 'include_own'?)" in errs[3]
    assert all(x.startswith(str(path)) and "\n" not in x for x in errs)
    assert not (tmp_path / "o").exists()


def test_a_misspelt_axis_key_is_one_error_not_one_per_value(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    with pytest.raises(ScenarioError) as e:
        plan_sweep(path, {"strategy.nam": ["krum", "median", "fedavg"]}, out=tmp_path / "o", skip_invalid=True)
    assert len(e.value.errors) == 1, e.value.errors
    assert e.value.errors[0].endswith("sweep strategy.nam=krum: unknown key (did you mean 'name'?); "
                                      "allowed here: name, params, f")


def test_skip_invalid_skips_a_parameter_another_rule_has(tmp_path) -> None:
    """m is multikrum's: with median it is a constraint failure of valid names (skipped), not a typo."""
    path = write(tmp_path, tiny(tmp_path, peers={"count": 8}, topology={"kind": "complete"}))
    grid = {"strategy.name": ["multikrum", "median"], "strategy.params.m": [2]}
    with pytest.raises(ScenarioError, match="unknown parameter 'm' of strategy 'median'.*skip-invalid"):
        plan_sweep(path, grid, out=tmp_path / "o")
    plan = plan_sweep(path, grid, out=tmp_path / "o", skip_invalid=True)
    assert [r.name for r in plan.runs] == ["strategy.name=multikrum__strategy.params.m=2"]
    assert [n for n, _, _ in plan.invalid] == ["strategy.name=median__strategy.params.m=2"]


def test_cli_typo_in_the_grid_exits_before_running_one_line_per_error(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    res = CliRunner().invoke(sweep, [str(path), "-g", "strategy.name=bulyn,medain", "--skip-invalid",
                                     "--local", "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 2 and "Traceback" not in res.output, res.output
    assert "strategy.name=bulyn: unknown strategy 'bulyn' (did you mean 'bulyan'?)" in lines[0]
    assert "strategy.name=medain: unknown strategy 'medain' (did you mean 'median'?)" in lines[1]
    assert not (tmp_path / "o").exists()


def _mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/metrics.jsonl")}


def test_resume_runs_only_what_is_missing(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path, checkpoint={"every": 1}))
    grid = {"strategy.name": ["fedavg", "local"], "seed": [0, 1]}
    out = tmp_path / "sw"
    plan = plan_sweep(path, grid, out=out)
    first = execute_sweep(plan, local=True)
    assert sorted(first.ran) == sorted(r.name for r in plan.runs) and not first.failed
    index = json.loads((out / "sweep.json").read_text())
    assert index["grid"] == grid and [r["dir"] for r in index["runs"]] == [r.name for r in plan.runs]
    for r in plan.runs:
        assert (r.dir / "summary.json").exists() and (r.dir / "scenario.yaml").exists()
    # a kill: one run lost its summary; another stopped after round 1 (checkpoint saved)
    lost, stopped = plan.runs[0], plan.runs[3]
    (lost.dir / "summary.json").unlink()
    reference = (stopped.dir / "metrics.jsonl").read_bytes()
    r = Run(parse(stopped.data), stopped.dir)
    r.create_dir(overwrite=True)
    assert r.execute(stop_after=1) == {"stopped_after": 1}
    assert (stopped.dir / "checkpoint.pt").exists() and not (stopped.dir / "summary.json").exists()
    before = _mtimes(out)
    second = execute_sweep(plan_sweep(path, grid, out=out), local=True)
    assert sorted(second.ran) == sorted([lost.name, stopped.name])
    assert len(second.already_complete) == 2
    after = _mtimes(out)
    for name in set(before) - {lost.name, stopped.name}:
        assert after[name] == before[name]  # complete runs untouched
    assert (stopped.dir / "metrics.jsonl").read_bytes() == reference  # resumed = uninterrupted
    third = execute_sweep(plan_sweep(path, grid, out=out), local=True)
    assert third.ran == [] and len(third.already_complete) == 4


def test_rerunning_part_of_a_grid_keeps_the_rest_of_the_sweep_listed(tmp_path) -> None:
    """More seeds, or one axis value run again (docs/bristle-repro.md reruns `-g
    peers.attack.name=alie --overwrite`), into the same --out: sweep.json lists the earlier runs
    too, in the merged grid's order, so `fedsim report` pools them (before: only the last grid's
    runs, the others silently gone from report and plot). Another base scenario or other axes: the
    index is the new grid's alone, as before."""
    from fedsim.report import report

    path = write(tmp_path, tiny(tmp_path, rounds=2))
    out = tmp_path / "sw"
    args = [str(path), "-g", "strategy.name=fedavg,local", "--out", str(out), "--local", "-q"]
    assert CliRunner().invoke(sweep, args + ["-g", "seed=0,1"]).exit_code == 0
    res = CliRunner().invoke(sweep, args + ["-g", "seed=2"])
    assert res.exit_code == 0 and "0 already complete, 2 ran" in res.output, res.output
    assert "sweep.json also lists 4 run(s) of an earlier grid" in res.output
    index = json.loads((out / "sweep.json").read_text())
    assert index["grid"] == {"strategy.name": ["fedavg", "local"], "seed": [0, 1, 2]}
    assert [r["dir"] for r in index["runs"]] == [f"strategy.name={s}__seed={k}" for s in ("fedavg", "local")
                                                 for k in (0, 1, 2)]
    res = CliRunner().invoke(report, [str(out)])
    rows = [x for x in res.output.splitlines() if x.startswith("| fedavg") or x.startswith("| local")]
    assert len(rows) == 2 and all(x.split("|")[2].strip() == "3" for x in rows), res.output
    # one value run again (--overwrite deletes only its folders): the rest stays listed
    res = CliRunner().invoke(sweep, [str(path), "-g", "strategy.name=local", "-g", "seed=0,1,2", "--out", str(out),
                                     "--local", "-q", "--overwrite"])
    assert res.exit_code == 0 and "0 already complete, 3 ran" in res.output, res.output
    assert len(json.loads((out / "sweep.json").read_text())["runs"]) == 6
    # a listed run whose folder the user deleted is no longer listed by the next rerun
    shutil.rmtree(out / "strategy.name=fedavg__seed=2")
    res = CliRunner().invoke(sweep, [str(path), "-g", "strategy.name=local", "-g", "seed=0,1,2", "--out", str(out),
                                     "--local", "-q"])
    assert res.exit_code == 0, res.output
    listed = [r["dir"] for r in json.loads((out / "sweep.json").read_text())["runs"]]
    assert len(listed) == 5 and "strategy.name=fedavg__seed=2" not in listed, listed
    # other axes, or another base scenario: the new grid's runs alone
    res = CliRunner().invoke(sweep, args)
    assert res.exit_code == 0 and "also lists" not in res.output, res.output
    assert [r["dir"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == [
        "strategy.name=fedavg", "strategy.name=local"]
    res = CliRunner().invoke(sweep, [str(path), "-g", "strategy.name=fedavg", "--out", str(out), "--local", "-q",
                                     "--set", "training.lr=0.1", "--overwrite"])
    assert res.exit_code == 0 and "also lists" not in res.output, res.output
    assert [r["dir"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == ["strategy.name=fedavg"]


def test_cli_dry_run_resume_and_changed_scenario(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path))
    out = tmp_path / "sw"
    args = [str(path), "-g", "strategy.name=fedavg,local", "--out", str(out), "--local", "-q"]
    res = CliRunner().invoke(sweep, args + ["--dry-run"])
    assert res.exit_code == 0, res.output
    assert "2 runs (0 complete, 2 to run)" in res.output
    res = CliRunner().invoke(sweep, args)
    assert res.exit_code == 0, res.output
    assert "0 already complete, 2 ran" in res.output
    res = CliRunner().invoke(sweep, args)
    assert "2 already complete, 0 ran" in res.output
    # the same folders with another scenario would mix results: refuse, unless --overwrite
    res = CliRunner().invoke(sweep, args + ["--set", "rounds=2"])
    assert res.exit_code != 0 and res.output.count("\n") == 1, res.output  # one line, naming the first and the rest
    assert res.output == (f"Error: run folders hold a different scenario than this sweep would run: "
                          f"{out / 'strategy.name=fedavg'}: rounds was 3, now 2 (and 1 more folder); pass "
                          "--overwrite to rerun them, or choose another --out\n"), res.output
    res = CliRunner().invoke(sweep, [a for a in args if a != "-q"] + ["--set", "rounds=2", "--overwrite"])
    assert res.exit_code == 0 and "0 already complete, 2 ran" in res.output  # with the progress bar
    res = CliRunner().invoke(sweep, [str(path), "-g", "strategy.name=nope", "--out", str(out), "--local"])
    assert res.exit_code != 0 and "strategy.name" in res.output


def test_failed_run_is_reported_and_others_finish(tmp_path, monkeypatch, seed1_fails) -> None:
    path = write(tmp_path, tiny(tmp_path))
    plan = plan_sweep(path, {"seed": [0, 1]}, out=tmp_path / "sw")
    res = execute_sweep(plan, local=True)
    assert res.ran == ["seed=0"] and "boom" in res.failed["seed=1"]
    assert "RuntimeError: boom" in (plan.runs[1].dir / "error.txt").read_text()
    monkeypatch.undo()  # the real Run.execute again (seed1_fails patched it through this monkeypatch)
    res = execute_sweep(plan, local=True)
    assert res.ran == ["seed=1"] and not (plan.runs[1].dir / "error.txt").exists()


def test_a_run_that_failed_before_its_folder_was_made_is_retried(tmp_path) -> None:
    # a task failing before Run.create_dir (here: a scenario that does not parse in the task; on a
    # cluster: data missing on the node) leaves error.txt in a folder the sweep made: the next
    # sweep retries the run, with or without --overwrite, instead of refusing the folder as a user's
    from fedsim.sweep_execute import run_one

    path = write(tmp_path, tiny(tmp_path))
    plan = plan_sweep(path, {"seed": [0, 1]}, out=tmp_path / "sw")
    assert run_one({"bogus": 1}, str(plan.runs[0].dir))["status"] == "failed"
    assert (plan.runs[0].dir / "error.txt").is_file()
    res = execute_sweep(plan, local=True)
    assert sorted(res.ran) == ["seed=0", "seed=1"] and not res.failed
    assert not (plan.runs[0].dir / "error.txt").exists()
    fresh = Path(str(plan.runs[1].dir) + "-x")
    assert run_one({"bogus": 1}, str(fresh))["status"] == "failed"  # a folder the task makes is marked too
    assert (fresh / ".fedsim-run").is_file() and (fresh / "error.txt").is_file()
    assert execute_sweep(plan, local=True, overwrite=True).ran == ["seed=0", "seed=1"]


def test_a_failed_run_never_marks_a_folder_holding_a_users_files(tmp_path) -> None:
    # files that appear in a planned folder after the sweep's start (or on a node without the
    # driver's filesystem): the run fails, and the folder is neither marked nor written, so the next
    # sweep refuses it instead of clearing it
    from fedsim.errors import RunDirExistsError
    from fedsim.sweep_execute import run_one

    path = write(tmp_path, tiny(tmp_path))
    plan = plan_sweep(path, {"seed": [0]}, out=tmp_path / "sw")
    d = plan.runs[0].dir
    d.mkdir(parents=True)
    (d / "my_notes.txt").write_text("mine")
    data = yaml.safe_load(path.read_text()) | {"seed": 0}
    assert run_one(data, str(d))["status"] == "failed"
    assert sorted(p.name for p in d.iterdir()) == ["my_notes.txt"]
    assert run_one({"bogus": 1}, str(d))["status"] == "failed"  # any failure: still not marked
    assert sorted(p.name for p in d.iterdir()) == ["my_notes.txt"]
    for overwrite in (False, True):
        with pytest.raises(RunDirExistsError, match="not a fedsim run directory"):
            execute_sweep(plan, local=True, overwrite=overwrite)
    assert (d / "my_notes.txt").read_text() == "mine"


def test_sweep_on_ray(tmp_path, ray_session) -> None:
    path = write(tmp_path, tiny(tmp_path))
    plan = plan_sweep(path, {"strategy.name": ["fedavg", "local"]}, out=tmp_path / "sw")
    res = execute_sweep(plan, jobs=2)
    assert sorted(res.ran) == ["strategy.name=fedavg", "strategy.name=local"] and not res.failed
    # the same numbers as a run in this process
    local = plan_sweep(path, {"strategy.name": ["fedavg", "local"]}, out=tmp_path / "lo")
    execute_sweep(local, local=True)
    for a, b in zip(plan.runs, local.runs, strict=True):
        assert (a.dir / "metrics.jsonl").read_bytes() == (b.dir / "metrics.jsonl").read_bytes()


def test_a_sweep_never_deletes_or_writes_into_a_folder_fedsim_did_not_make(tmp_path) -> None:
    """A run's folder holding files fedsim did not write is one line, even with --overwrite (which
    deleted it: a user's `base/` under --out was gone), and nothing is written or run; --out a
    run directory is one line too (the sweep's runs and sweep.json mixed with the run's files)."""
    from fedsim.cli import main

    path = write(tmp_path, tiny(tmp_path))
    out = tmp_path / "sw"
    (out / "base").mkdir(parents=True)
    (out / "base" / "thesis.tex").write_text("precious\n")
    for extra in ([], ["--overwrite"]):
        res = CliRunner().invoke(main, ["sweep", str(path), "--out", str(out), "--local", "-q", *extra])
        assert res.exit_code == 1, res.output
        assert [x for x in res.stderr.splitlines() if x.strip()] == [
            f"Error: {out / 'base'} exists and is not a fedsim run directory (no .fedsim-run); fedsim will not "
            "write into or delete it: move it away or choose another --out"]
        assert sorted(p.name for p in out.rglob("*")) == ["base", "thesis.tex"]  # no sweep.json, no run
    assert (out / "base" / "thesis.tex").read_text() == "precious\n"

    run = tmp_path / "one"
    one = Run(parse(tiny(tmp_path), "s.yaml"), run)
    one.create_dir()
    one.execute()
    before = sorted(p.name for p in run.iterdir())
    res = CliRunner().invoke(main, ["sweep", str(path), "--out", str(run), "--local", "-q", "--overwrite"])
    assert res.exit_code == 1, res.output
    assert res.stderr.strip() == (f"Error: {run} is a run directory (fedsim run's); a sweep writes its runs into a "
                                  "folder of their own: choose another --out")
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_failed_run_writes_nothing_into_a_locked_run_or_through_a_dangling_link(tmp_path) -> None:
    # another process's run holds the folder's lock: the sweep's run fails without an error.txt
    # beside that run's files; a dangling symbolic link: a failure is reported, never raised
    from fedsim import rundir
    from fedsim.sweep_execute import run_one

    path = write(tmp_path, tiny(tmp_path))
    data = yaml.safe_load(path.read_text())
    d = tmp_path / "sw" / "locked"
    d.mkdir(parents=True)
    rundir.mark(d)
    lock = rundir.DirLock(d)
    lock.acquire()
    try:
        res = run_one(data, str(d))
    finally:
        lock.release()
    assert res["status"] == "failed" and "RunLockedError" in res["error"]
    assert not (d / "error.txt").exists()
    link = tmp_path / "sw" / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert run_one({"bogus": 1}, str(link))["status"] == "failed"
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_mapping_with_mixed_key_types_is_refused_naming_its_grid_key(tmp_path) -> None:
    """``{1: a, kind: b}`` cannot be sorted to name its run's folder: it was a TypeError (an
    internal error) while naming the folder; now one line naming the grid key, nothing made."""
    path = write(tmp_path, tiny(tmp_path, sweep={"topology": [{"kind": "k_regular", 1: 2}]}))
    with pytest.raises(ScenarioError) as e:
        plan_sweep(path, out=tmp_path / "o")
    msg = str(e.value)
    assert msg.startswith(f"{path}: sweep topology=") and "'kind' beside 1" in msg and "\n" not in msg, msg
    deep = {"probes": [[{"method": "rollback", "params": {"x": 1, 2: 3}}]]}  # at any depth
    with pytest.raises(ScenarioError, match=r"sweep probes=.*'x' beside 2"):
        plan_sweep(write(tmp_path, tiny(tmp_path)), deep, out=tmp_path / "o")
    res = CliRunner().invoke(sweep, [str(write(tmp_path, tiny(tmp_path))), "-g", "dataset.domains={x: b, 1: a}",
                                     "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 1 and "sweep dataset.domains=" in res.output and "beside" in res.output, res.output
    assert "Traceback" not in res.output and "internal error" not in res.output
    assert not (tmp_path / "o").exists()


def test_valid_grids_keep_their_folder_names() -> None:
    """Refusing unsortable keys renames nothing: these names are today's (sorted keys, numbers with
    booleans sort together)."""
    assert run_name({"peers.attack.params": {"std": 2.0, "mean": 1}}) == "peers.attack.params=mean-1,std-2"
    assert run_name({"dataset.domains": {2: "rot", 1: "blur"}}) == "dataset.domains=1-blur,2-rot"
    probes = {"probes": [{"method": "rollback", "peer": 3}], "seed": 1}
    assert run_name(probes) == "probes=method-rollback,peer-3__seed=1"
    assert run_name({"topology": {"kind": "k_regular", "degree": 4}, "strategy.name": "krum"}) == (
        "topology=degree-4,kind-k_regular__strategy.name=krum"
    )
    assert run_name({"x": {1.5: "a", 1: {True: None}}}) == "x=1-True-null,1.5-a"


def test_a_valid_mapping_grid_plans_under_its_usual_folder_name(tmp_path) -> None:
    path = write(tmp_path, tiny(tmp_path, peers={"count": 6, "byzantine": 1}))
    grid = {"peers.attack.name": ["gaussian"], "peers.attack.params": [{"std": 2.0, "mean": 1}, {"std": 1.0}]}
    plan = plan_sweep(path, grid, out=tmp_path / "o")
    assert [r.name for r in plan.runs] == [
        "peers.attack.name=gaussian__peers.attack.params=mean-1,std-2",
        "peers.attack.name=gaussian__peers.attack.params=std-1",
    ]


def test_a_long_name_with_a_date_key_gets_a_digest(tmp_path) -> None:
    """YAML reads ``2001-01-01`` as a date: a grid mapping keyed by one, long enough for its folder
    name to be cut and digested, was an internal TypeError (json.dumps refuses date keys). Now the
    key's text is digested; names that never needed it are unchanged."""
    import datetime

    from fedsim.sweep_plan import MAX_NAME

    long = {"dataset.domains": {datetime.date(2001, 1, 1): "a" * 300}}
    name = run_name(long)
    assert len(name) <= MAX_NAME and "~" in name
    assert name != run_name({"dataset.domains": {datetime.date(2001, 1, 2): "a" * 300}})
    res = CliRunner().invoke(sweep, [str(write(tmp_path, tiny(tmp_path))), "-g",
                                     "dataset.domains={2001-01-01: " + "a" * 300 + "}",
                                     "--out", str(tmp_path / "o"), "--dry-run"])
    assert "internal error" not in res.output and "Traceback" not in res.output, res.output
