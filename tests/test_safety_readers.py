"""Hostile files in run and sweep folders, and a hostile Flower run config: one clear line naming
the file, nothing expanded, nothing read outside the folder, nothing written.

``fedsim report`` / ``fedsim plot`` / :func:`fedsim.load_run` read folders a user may have been
sent (``metrics.jsonl``, ``summary.json``, ``sweep.json``, ``probes.json``, ``scenario.yaml``);
the Flower run config's scenario reaches every device. The scenario-file cases of ``fedsim run``
(billion laughs, depth, duplicate keys, size) are in ``test_safety_inputs.py``; these are the
readers that did not go through the same bounded code.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import fedsim._runs as runs_mod
from fedsim._runs import load_runs
from fedsim.cli import main
from fedsim.errors import CorruptFileError, ScenarioError

# A scenario.yaml whose mappings alias each other: 10^5 leaves once expanded, 16 nodes as written.
# flatten() (every report and plot) walks the expansion, json.dumps of a list one serialises it.
DICT_LAUGHS = """\
name: laughs
a: &a {x0: 1, x1: 1, x2: 1, x3: 1, x4: 1, x5: 1, x6: 1, x7: 1, x8: 1, x9: 1}
b: &b {y0: *a, y1: *a, y2: *a, y3: *a, y4: *a, y5: *a, y6: *a, y7: *a, y8: *a, y9: *a}
c: &c {z0: *b, z1: *b, z2: *b, z3: *b, z4: *b, z5: *b, z6: *b, z7: *b, z8: *b, z9: *b}
d: &d {w0: *c, w1: *c, w2: *c, w3: *c, w4: *c, w5: *c, w6: *c, w7: *c, w8: *c, w9: *c}
e: {v0: *d, v1: *d, v2: *d, v3: *d, v4: *d, v5: *d, v6: *d, v7: *d, v8: *d, v9: *d}
"""


def _run(d: Path, metrics: bytes | None = None, summary: bytes | None = None, scenario: str | None = None) -> Path:
    d.mkdir(parents=True)
    (d / "scenario.yaml").write_text(scenario if scenario is not None else yaml.safe_dump({"name": d.name}))
    ok = (json.dumps({"round": 0, "accuracy_mean": 0.5}) + "\n").encode()
    (d / "metrics.jsonl").write_bytes(ok if metrics is None else metrics)
    (d / "summary.json").write_bytes(b'{"final_accuracy_mean": 0.5}' if summary is None else summary)
    return d


def _one_line(text: str) -> str:
    lines = [x for x in text.splitlines() if x.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{text[-2000:]}"
    assert "Traceback" not in text and "internal error" not in text, text
    return lines[0]


# --------------------------------------------------------------------------- scenario.yaml of a run
def test_a_run_folders_alias_bomb_is_refused_before_report_expands_it(tmp_path):
    run = _run(tmp_path / "r", scenario=DICT_LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError, match="aliases are expanded"):
        load_runs(run)
    assert time.perf_counter() - t0 < 5
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 1
    line = _one_line(res.stderr)
    assert str(run / "scenario.yaml") in line and "aliases" in line, line


def test_small_aliases_in_a_run_folders_scenario_still_read(tmp_path):
    run = _run(tmp_path / "r", scenario="name: r\nx: &x {lr: 0.1}\ntraining: *x\n")
    assert load_runs(run).runs[0].get("training.lr") == 0.1


# --------------------------------------------------------------------------- metrics.jsonl, summary.json
BAD_LINES = {
    "deep": (b"[" * 200_000 + b"\n", "nested too deeply"),
    "not utf-8": (b'{"round": 1, "x": "\xff\xfe"}\n', "not UTF-8"),
    "a list": (b"[1, 2]\n", "a JSON list, not a record"),
    "a number": (b"7\n", "a JSON int, not a record"),
    "huge int": (b'{"round": ' + b"9" * 5000 + b"}\n", "not valid JSON"),
    "not json": (b"{round: 1}\n", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_metrics_line_is_one_line_naming_the_file_and_line(tmp_path, case):
    bad, hint = BAD_LINES[case]
    good = b'{"round": 0, "accuracy_mean": 0.5}\n'
    run = _run(tmp_path / "r", metrics=good + bad + b'{"round": 2, "accuracy_mean": 0.6}\n')
    with pytest.raises(CorruptFileError, match=hint) as e:
        load_runs(run)
    assert f"{run / 'metrics.jsonl'}: line 2" in str(e.value)
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 1
    assert _one_line(res.stderr).startswith(f"Error: {run / 'metrics.jsonl'}: line 2: ")
    import fedsim
    from fedsim.api import RunResultError

    (run / ".fedsim-run").write_text("")
    with pytest.raises(RunResultError, match=hint):
        fedsim.load_run(run)


@pytest.mark.parametrize(("bad", "hint"), [
    (b"{}\n", "'round' is None, not a round number"),
    (b'{"round": "3"}\n', "'round' is '3', not a round number"),
    (b'{"round": true}\n', "'round' is True"),
    (b'{"round": 1, "accuracy_mean": "high"}\n', "'accuracy_mean' is 'high', not a number"),
    (b'{"round": 1, "bytes_sent_per_peer": [1]}\n', "'bytes_sent_per_peer' is [1], not a number"),
    (b'{"round": 1, "bytes_sent_total": null}\n', "'bytes_sent_total' is None, not a number"),
])
def test_a_metrics_record_tables_cannot_use_is_one_line_not_an_internal_error(tmp_path, bad, hint):
    run = _run(tmp_path / "r", metrics=b'{"round": 0, "accuracy_mean": 0.5}\n' + bad + b'{"round": 2}\n')
    for cmd in (["report", str(run)], ["plot", str(run), "--format", "png"]):
        res = CliRunner().invoke(main, cmd)
        assert res.exit_code == 1, res.output
        line = _one_line(res.stderr)
        assert line.startswith(f"Error: {run / 'metrics.jsonl'}: line 2: ") and hint in line, line
    assert not (run / "plots").exists()


def test_a_non_finite_accuracy_written_as_null_still_reads(tmp_path):
    run = _run(tmp_path / "r", metrics=b'{"round": 0, "accuracy_mean": null, "nonfinite": ["accuracy_mean"]}\n')
    assert load_runs(run).runs[0].metrics[0]["accuracy_mean"] is None


def test_report_and_plot_read_a_null_accuracy_as_nan(tmp_path):
    """A non-finite accuracy is written as null: the table prints nan, the curve has a gap, no
    target counts as reached there (was an internal TypeError in both commands)."""
    run = _run(tmp_path / "r", summary=b'{"final_accuracy_mean": null}', metrics=(
        b'{"round": 0, "accuracy_mean": 0.5, "accuracy_min": 0.4, "accuracy_max": 0.6}\n'
        b'{"round": 1, "accuracy_mean": null, "accuracy_min": null, "accuracy_max": null, '
        b'"nonfinite": ["accuracy_mean"]}\n'))
    data = load_runs(run).runs[0]
    assert data.metrics[1]["accuracy_mean"] is None  # the record as written
    assert [m["accuracy_mean"] for m in data.evaluations][0] == 0.5
    assert data.final_accuracy != data.final_accuracy and data.rounds_to(0.1) == 1  # NaN; round 0 reached it
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert "| nan |" in res.output
    res = CliRunner().invoke(main, ["plot", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "plots" / "accuracy_vs_round.png").stat().st_size > 0


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_torn_last_metrics_line_is_still_left_out(tmp_path, case):
    """A writer killed mid-line leaves a bad last line: the rounds before it are read."""
    bad, _ = BAD_LINES[case]
    run = _run(tmp_path / "r", metrics=b'{"round": 0, "accuracy_mean": 0.5}\n' + bad + b"\n\n")
    assert [m["round"] for m in load_runs(run).runs[0].metrics] == [0]


def test_an_oversized_metrics_line_is_refused_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_mod, "MAX_JSON_BYTES", 1000)
    run = _run(tmp_path / "r", metrics=b'{"round": 0, "pad": "' + b"x" * 5000 + b'"}\n{"round": 1}\n')
    sizes: list[int] = []
    real = runs_mod.json_record
    monkeypatch.setattr(runs_mod, "json_record", lambda line, where: sizes.append(len(line)) or real(line, where))
    with pytest.raises(CorruptFileError, match=r"line 1: longer than"):
        load_runs(run)
    assert all(n <= 1001 for n in sizes)  # never parsed (nor held) past the cap


@pytest.mark.parametrize(("raw", "hint"), [
    (b"[" * 200_000, "nested too deeply"),
    (b"[1, 2]", "a JSON list, not a run's summary"),
    (b'{"final_accuracy_mean": 0.5', "not valid JSON"),
])
def test_a_bad_summary_is_one_line_naming_it(tmp_path, raw, hint):
    import fedsim
    from fedsim.api import RunResultError

    run = _run(tmp_path / "r", summary=raw)
    with pytest.raises(CorruptFileError, match=hint) as e:
        load_runs(run)
    assert str(run / "summary.json") in str(e.value)
    (run / ".fedsim-run").write_text("")
    with pytest.raises(RunResultError, match=hint):
        fedsim.load_run(run)


def test_a_checksummed_checkpoint_with_deeply_nested_metadata_is_one_line(tmp_path):
    """The checksum is no defence against a planted file (anyone can compute it): the metadata
    line is parsed by the bounded reader too."""
    import hashlib

    from fedsim import rundir

    body = b"[" * 200_000 + b"\nrest"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(rundir._checkpoint_header(hashlib.sha256(body).hexdigest()) + body)
    for read in (rundir.read_checkpoint_meta, rundir.read_checkpoint):
        with pytest.raises(CorruptFileError, match="metadata is unreadable"):
            read(path)


def test_an_oversized_summary_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_mod, "MAX_JSON_BYTES", 100)
    run = _run(tmp_path / "r", summary=json.dumps({"pad": "x" * 500}).encode())
    with pytest.raises(CorruptFileError, match=r"summary.json: more than"):
        load_runs(run)


def test_a_deeply_nested_probes_json_is_a_line_in_the_report(tmp_path):
    run = _run(tmp_path / "r")
    (run / "probes.json").write_bytes(b"[" * 200_000)
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert f"{run / 'probes.json'}: refused: JSON nested too deeply" in res.output
    assert load_runs(run).runs[0].probes() is None  # fedsim plot: no probe figure, no error


# --------------------------------------------------------------------------- sweep.json
@pytest.mark.parametrize("entry", [
    {"dir": "../outside"}, {"dir": "/etc"}, {"dir": ".."}, {"dir": "a/../../outside"}, {"dir": 3}, "a", {},
])
def test_a_sweep_index_cannot_point_outside_the_sweep(tmp_path, entry):
    outside = _run(tmp_path / "outside")  # a run the planted index would pull into the report
    sweep = tmp_path / "sw"
    _run(sweep / "a")
    (sweep / "sweep.json").write_text(json.dumps({"grid": {}, "runs": [{"dir": "a"}, entry]}))
    with pytest.raises(CorruptFileError, match=r"runs\[1\]: .* is not the name of a folder in the sweep"):
        load_runs(sweep)
    res = CliRunner().invoke(main, ["report", str(sweep)])
    assert res.exit_code == 1 and str(sweep / "sweep.json") in _one_line(res.stderr)
    assert outside.is_dir() and not (sweep / "plots").exists()


@pytest.mark.parametrize("index", [
    {"grid": ["x"], "runs": [{"dir": "a"}]},
    {"grid": {}, "runs": {"dir": "a"}},
    {"grid": {"seed": 5}, "runs": [{"dir": "a"}]},  # a grid value that is no list of values
    {"grid": {}, "runs": [{"dir": "a"}], "invalid": [{"dir": [1]}]},  # an invalid entry with no folder name
])
def test_a_sweep_index_of_the_wrong_shape_is_one_line(tmp_path, index):
    sweep = tmp_path / "sw"
    _run(sweep / "a")
    (sweep / "sweep.json").write_text(json.dumps(index))
    with pytest.raises(CorruptFileError, match="not a sweep index"):
        load_runs(sweep)


def test_run_error_reads_only_the_tail_of_a_large_error_file(tmp_path):
    import tracemalloc

    run = _run(tmp_path / "r")
    with (run / "error.txt").open("wb") as fh:
        fh.write(b"x" * (8 << 20) + b"\nTraceback ...\nRuntimeError: boom\n\n")
    tracemalloc.start()
    try:
        assert runs_mod.run_error(run) == "RuntimeError: boom"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak


# --------------------------------------------------------------------------- sweep folder names
@pytest.mark.parametrize("overrides", [
    {"peers.attack.params": {"../../../victim": 1}},
    {"peers.attack.params": {"w": {"/etc/x": 1}}},
    {"peers.attack.params.a/../../b": 1},
])
def test_a_sweep_folder_name_is_one_plain_name_whatever_the_values(overrides):
    from fedsim.sweep_plan import run_name

    name = run_name(overrides)
    assert "/" not in name and "\0" not in name and Path(name).name == name, name


def test_plain_sweep_folder_names_are_unchanged():
    from fedsim.sweep_plan import run_name

    assert run_name({"strategy.name": "krum", "peers.attack.params": {"scale": 2, "mode": "a b"}}) == (
        "strategy.name=krum__peers.attack.params=mode-a-b,scale-2")


# --------------------------------------------------------------------------- the Flower run config
@pytest.mark.parametrize(("text", "hint"), [
    ("rounds: 3\nrounds: 400\n", "duplicate key 'rounds'"),
    ("rounds: [1, 2\n", "not valid YAML"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    ("rounds: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    (DICT_LAUGHS, "aliases are expanded"),
])
def test_the_flower_run_configs_scenario_is_read_as_a_scenario_file_is(text, hint):
    from fedsim.flower.common import BridgeError, scenario_data

    with pytest.raises(BridgeError, match=hint) as e:
        scenario_data(text)
    assert str(e.value).startswith("run config 'scenario'") and "\n" not in str(e.value)


def test_an_oversized_flower_scenario_is_refused_before_parsing(monkeypatch):
    from fedsim.flower import common

    monkeypatch.setattr(common, "MAX_YAML_BYTES", 100)
    with pytest.raises(common.BridgeError, match="run config 'scenario': more than"):
        common.scenario_data("name: x\n" + "# pad\n" * 100)


def test_the_flower_run_configs_scenario_still_reads():
    from fedsim.flower.common import scenario_data

    assert scenario_data("name: t\ntraining: {lr: 1e-3}\n") == {"name": "t", "training": {"lr": 0.001}}
    assert scenario_data("") == {}


# --------------------------------------------------------------------------- IDX data files (MNIST & co.)
def _idx_header(*shape: int) -> bytes:
    return bytes([0, 0, 8, len(shape)]) + b"".join(int(s).to_bytes(4, "big") for s in shape)


def test_a_gzip_bomb_idx_file_is_refused_without_being_decompressed_whole(tmp_path):
    """A 50 MB run of zeros compresses to ~50 KB: read only as far as the header's 20 labels."""
    import gzip
    import tracemalloc

    from fedsim.data.idx import read_idx

    bomb = tmp_path / "train-labels-idx1-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx_header(20) + bytes(50 * 2**20), compresslevel=9))
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(CorruptFileError, match=r"shape \(20,\) \(28 bytes\), the file has more \(corrupt\)"):
            read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak / 2**20:.0f} MiB held to refuse it"


@pytest.mark.parametrize("gz", [False, True])
def test_an_idx_header_declaring_more_than_the_machines_memory_is_refused_first(tmp_path, gz):
    import gzip

    from fedsim.data.idx import read_idx

    raw = _idx_header(2**31, 2**31, 2**31 - 1) + bytes(100)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(CorruptFileError, match="more than this machine's memory") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_valid_idx_files_still_read_gzipped_or_not(tmp_path):
    import gzip

    import numpy as np

    from fedsim.data.idx import read_idx

    arr = (np.arange(60) % 251).astype(np.uint8).reshape(3, 4, 5)
    raw = _idx_header(3, 4, 5) + arr.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "a.gz"):
        np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


@pytest.mark.parametrize("raw", [b"[" * 200_000, b'{"5": "\xff"}'])
def test_a_partition_map_nested_too_deeply_or_not_utf8_is_one_bridge_line(tmp_path, raw):
    from fedsim.flower.common import BridgeError
    from fedsim.flower.identity import PartitionAssignment, load_partition_map

    f = tmp_path / "map.json"
    f.write_bytes(raw)
    with pytest.raises(BridgeError, match="partition-map") as e:
        load_partition_map(f, 2)
    assert str(f) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BridgeError, match="unreadable partition assignment"):
        PartitionAssignment(2, store=f)


def test_a_deeply_nested_plugin_record_is_one_bridge_line():
    from fedsim.flower.common import BridgeError
    from fedsim.flower.plugpack import read_record

    with pytest.raises(BridgeError, match="expected JSON {path: sha256}"):
        read_record({"plugins": "[" * 200_000})


# --------------------------------------------------------------------------- figure file names
def test_fedsim_plot_writes_only_below_its_plots_folder_whatever_the_scenario_keys(tmp_path):
    """A key that varies between the runs splits the figures, and its name and values go into the
    figure's file name: a planted key ``x/../../../escaped`` must not climb out of ``plots/``."""
    pytest.importorskip("matplotlib")
    from fedsim.plot import plot_dir

    root = tmp_path / "shared" / "runs"
    for i, rule in enumerate(["fedavg", "median"]):  # the rule draws the lines, the planted key splits figures
        scenario = yaml.safe_dump({"name": f"r{i}", "strategy": {"name": rule}, "x/../../../escaped": i})
        metrics = b"".join(json.dumps({"round": t, "accuracy_mean": 0.1 * t}).encode() + b"\n" for t in range(3))
        _run(root / f"r{i}", metrics=metrics, scenario=scenario)
    written = plot_dir(root, formats=["png"], log=lambda m: None)
    assert written
    plots = (root / "plots").resolve()
    assert all(p.resolve().is_relative_to(plots) for p in written), written
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.resolve().is_relative_to(plots)
               and p.suffix == ".png"]
    assert not outside, outside


def test_figures_of_settings_that_differ_only_in_unsafe_characters_do_not_overwrite_each_other(tmp_path):
    """``é`` and ``ü`` both become ``-`` in a file name: each figure keeps its own file."""
    pytest.importorskip("matplotlib")
    from fedsim.plot import plot_dir

    root = tmp_path / "runs"
    for i, (rule, foo) in enumerate([(r, f) for r in ("fedavg", "median") for f in ("é", "ü")]):
        scenario = yaml.safe_dump({"name": f"r{i}", "strategy": {"name": rule}, "foo": foo})
        metrics = b"".join(json.dumps({"round": t, "accuracy_mean": 0.1 * t}).encode() + b"\n" for t in range(3))
        _run(root / f"r{i}", metrics=metrics, scenario=scenario)
    written = plot_dir(root, formats=["png"], log=lambda m: None)
    curves = [p for p in written if p.name.startswith("accuracy_vs_round")]
    assert len(curves) == 2 and len(set(curves)) == 2, curves
    assert all(p.exists() for p in curves)


# --------------------------------------------------------------------------- resume and sweep readers
def test_a_deeply_nested_timings_line_is_the_one_line_resume_error(tmp_path):
    from fedsim.runfiles import TimingsWriter

    t = tmp_path / "timings.jsonl"
    t.write_bytes(b'{"round": 0, "seconds": 1}\n' + b"[" * 200_000 + b'\n{"round": 1, "seconds": 1}\n')
    with pytest.raises(CorruptFileError, match=r"timings.jsonl: line 2 is not a timing record"):
        TimingsWriter(t).trim(1)


def test_a_complete_sweep_runs_corrupt_summary_is_one_line(tmp_path):
    from fedsim.sweep_execute import run_one

    d = tmp_path / "run"
    d.mkdir()
    (d / "summary.json").write_bytes(b"[" * 200_000)
    with pytest.raises(CorruptFileError, match="summary.json: refused: JSON nested too deeply"):
        run_one({}, str(d))


# --------------------------------------------------------------------------- your own .npz
def _npy(shape: tuple[int, ...], data: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    import io

    import numpy as np

    fh = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0)(fh, header)
    return fh.getvalue() + data


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_an_npz_declaring_more_than_the_machines_memory_is_refused_before_numpy_allocates(tmp_path, version):
    import io
    import zipfile

    import numpy as np

    from fedsim.data import datasets

    path = tmp_path / "mine.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", _npy((10**7, 10**6), bytes(4000), version))  # 40 TB declared, 4 kB there
        buf = io.BytesIO()
        np.save(buf, np.arange(10) % 2)
        zf.writestr("y.npy", buf.getvalue())
    with pytest.raises(CorruptFileError, match="more than this machine's memory") as e:
        datasets.load("npz", path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_npz_within_memory_still_loads(tmp_path):
    import numpy as np

    from fedsim.data import datasets

    path = tmp_path / "mine.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), y=np.arange(50) % 5)
    assert datasets.load("npz", path).num_classes == 5


def test_fedsim_plot_never_writes_through_a_planted_symbolic_link(tmp_path):
    """A figure's file planted as a link to one of the user's files is replaced, not written
    through; a planted ``plots`` link is refused (one line, nothing written)."""
    pytest.importorskip("matplotlib")
    from fedsim.plot import plot_dir

    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text("keep me\n")
    run = _run(tmp_path / "sent" / "r", metrics=b'{"round": 0, "accuracy_mean": 0.5}\n')
    (run / "plots").mkdir()
    (run / "plots" / "accuracy_vs_round.png").symlink_to(victim)
    written = plot_dir(run, formats=["png"], log=lambda m: None)
    assert run / "plots" / "accuracy_vs_round.png" in written
    assert victim.read_text() == "keep me\n"
    assert not (run / "plots" / "accuracy_vs_round.png").is_symlink()
    umask = os.umask(0o022)
    os.umask(umask)
    assert (run / "plots" / "accuracy_vs_round.png").stat().st_mode & 0o777 == 0o666 & ~umask  # as savefig(path)
    assert not list((run / "plots").glob(".*.tmp"))

    other = _run(tmp_path / "sent2" / "r", metrics=b'{"round": 0, "accuracy_mean": 0.5}\n')
    (other / "plots").symlink_to(victim.parent, target_is_directory=True)
    res = CliRunner().invoke(main, ["plot", str(other), "--format", "png"])
    assert res.exit_code == 1 and "is a symbolic link" in _one_line(res.stderr)
    assert sorted(p.name for p in victim.parent.iterdir()) == [".bashrc"]


@pytest.mark.parametrize("name", ["1e5", "2E-3", "3.5e1"])
def test_a_name_that_reads_as_a_number_survives_the_recorded_and_the_flower_scenario(tmp_path, name):
    """fedsim reads ``1e5`` as a float (yamlsafe); what it writes (scenario.yaml, the Flower run
    config) quotes such a string, so a run named "1e5" resumes and runs through Flower."""
    from fedsim.flower import common
    from fedsim.scenario import parse
    from fedsim.yamlsafe import dump_yaml, safe_yaml

    sc = parse({"name": name, "mode": "federated", "topology": {"kind": "star"},
                "dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"}})
    assert safe_yaml(dump_yaml(sc.model_dump(mode="json")), "x")["name"] == name
    assert common.scenario_from_run_config({"scenario": common.scenario_yaml(sc)}).name == name
