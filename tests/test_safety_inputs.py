"""Bounded, strictly typed inputs decided at validation time by the code the run uses, and data
files that are loaded safely: every hostile or careless input gets one line naming the file or
field, quickly, and nothing in a data file runs."""

from __future__ import annotations

import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedsim import limits
from fedsim.cli import main
from fedsim.data import cifar, datasets
from fedsim.errors import CorruptFileError
from fedsim.scenario import (
    MAX_YAML_BYTES,
    ScenarioError,
    build_topology,
    load,
    parse,
    resolve_f,
    resource_warnings,
)

SMALL = {"dataset": {"name": "sklearn_digits"}, "backbone": {"name": "identity"}}


def _one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and len(msg) < 1000, msg
    return msg


def _write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ---------------------------------------------------------------- YAML read safely
BILLION_LAUGHS = """
peers:
  byzantine: 2
  attack:
    name: sign_flip
    params:
      a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
      b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
      c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
      d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
      e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
      f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
      g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
      h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
      i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_billion_laughs_is_refused_quickly_without_expanding(tmp_path):
    p = _write(tmp_path, BILLION_LAUGHS)
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert time.perf_counter() - t0 < 5
    msg = _one_line(e.value)
    assert str(p) in msg and "aliases" in msg


def test_recursive_alias_is_refused(tmp_path):
    p = _write(tmp_path, "peers: {byzantine: 1, attack: {name: sign_flip, params: {x: &x [1, *x]}}}\n")
    with pytest.raises(ScenarioError, match="deeper|recursive"):
        load(p)


def test_small_aliases_still_work(tmp_path):
    sc = load(_write(tmp_path, "rounds: &r 3\ncheckpoint: {every: *r}\ntraining:\n  <<: {lr: 0.5}\n  momentum: 0.5\n"))
    assert sc.rounds == 3 and sc.checkpoint.every == 3 and sc.training.lr == 0.5


@pytest.mark.parametrize("text, key, line", [
    ("rounds: 3\nseed: 1\nrounds: 400\n", "rounds", 3),  # the second would silently win
    ("peers: {count: 10}\npeers: {count: 12}\n", "peers", 2),
    ("training: {lr: 0.1, momentum: 0.9, lr: 0.2}\n", "lr", 1),
])
def test_duplicate_key_is_refused_naming_it(tmp_path, text, key, line):
    p = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as e:
        load(p)
    msg = _one_line(e.value)
    assert str(p) in msg and f"duplicate key {key!r}" in msg and f"(line {line}," in msg


def test_merged_keys_may_still_be_overridden(tmp_path):
    sc = load(_write(tmp_path, "training:\n  <<: {lr: 0.5, momentum: 0.5}\n  lr: 0.25\n"))
    assert sc.training.lr == 0.25 and sc.training.momentum == 0.5


def test_deeply_nested_yaml_is_one_line(tmp_path):
    p = _write(tmp_path, "a: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert "nested deeper" in _one_line(e.value) and str(p) in str(e.value)


def test_oversized_yaml_is_refused_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "big.yaml"
    with open(p, "wb") as fh:
        fh.write(b"rounds: 2\n")
        fh.truncate(MAX_YAML_BYTES + 1)  # sparse: a file that size, nothing to parse but zeros
    read = []
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: read.append(self) or "")
    with pytest.raises(ScenarioError) as e:
        load(p)
    assert "MiB" in _one_line(e.value) and str(p) in str(e.value) and not read


def test_yaml_exponent_floats_are_floats(tmp_path):
    sc = load(_write(tmp_path, "training: {optimizer: adam, lr: 1e-3, weight_decay: 5e-3}\n"))
    assert sc.training.lr == pytest.approx(1e-3) and sc.training.weight_decay == pytest.approx(5e-3)


def test_validate_prints_one_line_per_error(tmp_path):
    p = _write(tmp_path, "rounds: '5'\npeers: {count: true}\ntraining: {lr: -1}\n")
    r = CliRunner().invoke(main, ["validate", str(p)])
    assert r.exit_code == 1
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 3, r.output
    for field, line in zip(("rounds", "peers.count", "training.lr"), lines, strict=True):
        assert line.startswith(f"{p}: {field}:"), line


# ---------------------------------------------------------------- strict, finite, bounded values
@pytest.mark.parametrize(
    ("yaml_text", "field", "hint"),
    [
        ("peers: {count: true}", "peers.count", "valid integer, got true"),
        ("rounds: '5'", "rounds", "valid integer, got '5'"),
        ("seed: 1.5", "seed", "valid integer"),
        ("training: {bias: 1}", "training.bias", "valid boolean"),
        ("engine: {cpus_per_actor: .inf}", "engine.cpus_per_actor", "finite"),
        ("partition: {alpha: .nan}", "partition.alpha", "finite"),
        ("training: {weight_decay: 1.0e+30}", "training.weight_decay", "less than or equal to 10"),
        ("training: {optimizer: sgd, lr: 10, momentum: 0, weight_decay: 0.5}", "training.weight_decay", "1 + momentum"),
        ("evaluation: {peers: true}", "evaluation.peers", "got true"),
    ],
)
def test_strict_finite_bounded_values(tmp_path, yaml_text, field, hint):
    with pytest.raises(ScenarioError) as e:
        load(_write(tmp_path, yaml_text + "\n"))
    assert f" {field}" in _one_line(e.value) and hint in str(e.value)


def test_ints_are_still_floats():
    sc = parse({"training": {"lr": 1, "momentum": 0}, "peers": {"byzantine_fraction": 0}})
    assert isinstance(sc.training.lr, float) and sc.training.lr == 1.0


def test_many_dirichlet_peers_refused_before_any_work():
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "peers": {"count": 1_000_000}, "partition": {"kind": "dirichlet"}})
    assert time.perf_counter() - t0 < 10
    assert "peers.count" in _one_line(e.value) and "719 peers" in str(e.value)  # 1438 training samples / 2


@pytest.mark.parametrize(
    ("partition", "field"),
    [({"kind": "classes", "k": 10**9}, "partition.k"), ({"kind": "windows", "window": 11}, "partition.window")],
)
def test_partition_parameters_bounded_by_classes(partition, field):
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "partition": partition})
    assert field in _one_line(e.value) and "10" in str(e.value)


def test_partition_that_leaves_a_peer_without_training_data_is_refused():
    # 718 peers of 2 samples, 90% kept for validation: both samples go to validation
    with pytest.raises(ScenarioError, match="without training samples"):
        parse({**SMALL, "peers": {"count": 718}, "partition": {"kind": "iid", "val_fraction": 0.9},
               "topology": {"kind": "ring"}, "engine": {"backend": "local"}})


# ---------------------------------------------------------------- the topology the run builds
@pytest.mark.parametrize(
    ("topology", "count", "hint"),
    [({"kind": "ring"}, 2, "ring needs peers.count >= 3"), ({"kind": "k_regular", "degree": 3}, 9, "even")],
)
def test_topology_built_at_validation(topology, count, hint):
    with pytest.raises(ScenarioError) as e:
        parse({**SMALL, "peers": {"count": count}, "topology": topology})
    assert hint in _one_line(e.value) and "topology." in str(e.value)


def test_erdos_renyi_f_is_the_runs(tmp_path, monkeypatch):
    """Validation checks the rule with the f the run will use: the real graph's mean in-degree
    (11.3 for this seed), not p·(n−1) = 10.15 (which gave f = 3 where the run uses 4)."""
    import strategies
    from fedsim.prepare import prepare

    d = {**SMALL, "seed": 3, "backbone": {"name": "identity", "cache_dir": str(tmp_path / "c")},
         "peers": {"count": 30, "byzantine_fraction": 0.3, "attack": {"name": "sign_flip"}},
         "topology": {"kind": "erdos_renyi", "p": 0.35}}
    checked = []
    monkeypatch.setattr(strategies.REGISTRY["fedavg"], "check", lambda self, n, f: checked.append((n, f)))
    sc = parse(d)
    run_f = prepare(sc).f
    assert checked and checked[-1][1] == run_f == resolve_f(sc, build_topology(sc))[0] == 4
    assert checked[-1][0] == 11


# ---------------------------------------------------------------- what the run asks of the machine
def test_fifty_thousand_peers_in_3_gb_is_refused_before_starting(monkeypatch):
    monkeypatch.setattr(limits, "machine_memory", lambda: 3 * 2**30)
    t0 = time.perf_counter()
    with pytest.raises(ScenarioError) as e:
        parse({"dataset": {"name": "fashion_mnist_embedded"}, "partition": {"kind": "iid"},
               "peers": {"count": 50_000}, "topology": {"kind": "ring"}, "engine": {"backend": "local"}})
    msg = _one_line(e.value)
    assert msg.startswith("scenario: peers.count:") and "3.0 GiB" in msg and "lower peers.count" in msg
    assert time.perf_counter() - t0 < 30


def test_memory_estimate_grows_with_what_it_names():
    base = dict(peers=100, num_params=1000, dim=100, n_train=1000, n_test=100, groups=2, concurrent=1,
                adam=False, consolidated=False, forged=False, edges=600, ray_actors=0)
    est = limits.estimate_memory(**base)
    assert limits.estimate_memory(**{**base, "peers": 1000}).heads == 10 * est.heads
    assert limits.estimate_memory(**{**base, "adam": True}).heads > est.heads
    assert limits.estimate_memory(**{**base, "ray_actors": 40}).biggest()[0] == "engine.num_actors"
    assert limits.memory_error(est, available=est.total) is None
    assert "lower" in limits.memory_error(est, available=est.total - 1)


def test_num_actors_beyond_the_cpus_warns(monkeypatch, tmp_path):
    monkeypatch.setattr(limits, "machine_cpus", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    sc = parse({**SMALL, "engine": {"backend": "ray", "num_actors": 40}})
    (w,) = resource_warnings(sc)
    assert "engine.num_actors" in w and "40 CPUs" in w and "<= 2" in w
    assert resource_warnings(parse({**SMALL, "engine": {"backend": "ray", "num_actors": 2}})) == []
    r = CliRunner().invoke(main, ["validate", str(_write(tmp_path, "engine: {num_actors: 40}\n"))])
    assert r.exit_code == 0 and "warning: engine.num_actors" in r.output


# ---------------------------------------------------------------- data files loaded safely
class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _cifar_batch(n: int, seed: int, numpy1_names: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    d = {b"batch_label": b"b", b"labels": [int(x) for x in np.arange(n) % 10],
         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}
    raw = pickle.dumps(d, protocol=2)
    if numpy1_names:  # as the CIFAR release (numpy 1.x) names the reconstructor
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return raw


def test_cifar_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": _Planted(marker), b"labels": []}))
    with pytest.raises(CorruptFileError) as e:
        cifar.cifar10(tmp_path)
    assert not marker.exists()
    assert str(tmp_path / "data_batch_1") in _one_line(e.value) and "refused" in str(e.value)


@pytest.mark.parametrize("numpy1_names", [False, True])
def test_valid_cifar_batches_still_load(tmp_path, numpy1_names):
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}").write_bytes(_cifar_batch(20, i, numpy1_names))
    (tmp_path / "test_batch").write_bytes(_cifar_batch(10, 9, numpy1_names))
    ds = datasets.load("cifar10", tmp_path)
    assert ds.x_train.shape == (100, 32, 32, 3) and ds.x_test.shape == (10, 32, 32, 3) and ds.num_classes == 10
    first = pickle.loads(_cifar_batch(20, 1))[b"data"]
    assert (ds.x_train[0] == first[0].reshape(3, 32, 32).transpose(1, 2, 0)).all()


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()


def _mnist_dir(tmp_path: Path, **override: bytes) -> Path:
    files = {
        "train-images-idx3-ubyte": _idx(np.zeros((20, 28, 28), np.uint8)),
        "train-labels-idx1-ubyte": _idx((np.arange(20) % 10).astype(np.uint8)),
        "t10k-images-idx3-ubyte": _idx(np.zeros((10, 28, 28), np.uint8)),
        "t10k-labels-idx1-ubyte": _idx((np.arange(10) % 10).astype(np.uint8)),
    } | override
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
    return tmp_path


@pytest.mark.parametrize(
    ("name", "raw", "hint"),
    [
        ("train-labels-idx1-ubyte", b"", "empty"),
        ("train-images-idx3-ubyte", _idx(np.zeros((20, 28, 28), np.uint8))[:-5], "truncated"),
        ("train-labels-idx1-ubyte", b"PK\x03\x04junk", "not an unsigned-byte IDX"),
        ("train-labels-idx1-ubyte", _idx((np.arange(19) % 10).astype(np.uint8)), "19 labels for the 20 images"),
    ],
)
def test_bad_idx_files_are_one_line_naming_the_file(tmp_path, name, raw, hint):
    d = _mnist_dir(tmp_path, **{name: raw})
    with pytest.raises(CorruptFileError) as e:
        datasets.load("mnist", d)
    assert hint in _one_line(e.value) and str(d / name) in str(e.value)


def test_bad_gzip_is_one_line_naming_the_file(tmp_path):
    d = _mnist_dir(tmp_path)
    (d / "train-labels-idx1-ubyte").unlink()
    good = gzip.compress(_idx((np.arange(20) % 10).astype(np.uint8)))
    (d / "train-labels-idx1-ubyte.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError) as e:
        datasets.load("mnist", d)
    assert "gzip" in _one_line(e.value) and "train-labels-idx1-ubyte.gz" in str(e.value)


def test_mnist_from_valid_idx_files(tmp_path):
    ds = datasets.load("mnist", _mnist_dir(tmp_path))
    assert ds.x_train.shape == (20, 28, 28) and ds.num_classes == 10


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_bad_files_are_one_line(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip at all")
    with pytest.raises(CorruptFileError) as e:
        datasets.load("npz", bad)
    assert str(bad) in _one_line(e.value)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}] * 10, dtype=object), y=np.arange(10) % 2)
    with pytest.raises(CorruptFileError) as e:
        datasets.load("npz", obj)
    assert str(obj) in _one_line(e.value)


def test_a_lone_npy_given_as_npz_data_is_refused_without_loading_it(tmp_path, monkeypatch):
    lone = tmp_path / "x.npz"
    np.save(lone.with_suffix(".npy"), np.zeros((4, 3), dtype=np.float32))
    lone.with_suffix(".npy").rename(lone)

    def no_load(*a, **kw):
        raise AssertionError("np.load called on a lone .npy")

    monkeypatch.setattr(np, "load", no_load)
    with pytest.raises(CorruptFileError, match="a single .npy array, expected an .npz archive") as e:
        datasets.load("npz", lone)
    assert str(lone) in _one_line(e.value)
    other = tmp_path / "y.npz"
    other.write_bytes(b"just text")
    with pytest.raises(CorruptFileError, match=r"not a readable \.npz \(not a zip archive\)"):
        datasets.load("npz", other)


def test_npz_folder_holds_exactly_one_file(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), np.arange(50) % 5
    with pytest.raises(CorruptFileError) as e:
        datasets.load("npz", tmp_path)
    assert "found 0" in _one_line(e.value) and str(tmp_path) in str(e.value)
    _npz(tmp_path / "mine.npz", x=x, y=y)
    assert datasets.load("npz", tmp_path).num_classes == 5
    _npz(tmp_path / "other.npz", x=x, y=y)
    with pytest.raises(CorruptFileError, match="found 2"):
        datasets.load("npz", tmp_path)


def test_npz_labels_must_be_zero_based(tmp_path):
    x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
    p = _npz(tmp_path / "d.npz", x=x, y=np.arange(60) % 10 + 1)  # labels 1..10
    with pytest.raises(CorruptFileError) as e:
        datasets.load("npz", p)
    msg = _one_line(e.value)
    assert "found 10 distinct values 1..10" in msg and msg.endswith("save y - 1 instead") and str(p) in msg
    r = CliRunner().invoke(main, ["validate", str(_write(tmp_path, f"dataset: {{name: npz, data_dir: {p}}}\n"))])
    assert r.exit_code == 1 and "dataset.data_dir" in r.output and "Traceback" not in r.output


def test_npz_non_finite_or_mismatched_is_refused(tmp_path):
    x = np.ones((10, 3), np.float32)
    x[3, 1] = np.nan
    with pytest.raises(CorruptFileError, match="NaN"):
        datasets.load("npz", _npz(tmp_path / "nan.npz", x=x, y=np.arange(10) % 2))
    with pytest.raises(CorruptFileError, match="rows in x"):
        datasets.load("npz", _npz(tmp_path / "n.npz", x=np.ones((10, 3)), y=np.arange(9) % 2))


def test_validate_names_missing_or_corrupt_data(tmp_path):
    (tmp_path / "m").mkdir()
    d = _mnist_dir(tmp_path / "m", **{"t10k-labels-idx1-ubyte": b""})
    r = CliRunner().invoke(main, ["validate", str(_write(tmp_path, f"dataset: {{name: mnist, data_dir: {d}}}\n"))])
    assert r.exit_code == 1 and "t10k-labels-idx1-ubyte" in r.output and "Traceback" not in r.output
    missing = tmp_path / "nowhere"
    p = _write(tmp_path, f"dataset: {{name: mnist, data_dir: {missing}}}\n")
    r = CliRunner().invoke(main, ["validate", str(p)])
    assert r.exit_code == 1 and "dataset.data_dir" in r.output and str(missing) in r.output


def test_corrupt_backbone_weights_are_one_line(tmp_path, monkeypatch):
    from fedsim.models.backbones import load_backbone

    monkeypatch.setenv("FEDSIM_WEIGHTS_DIR", str(tmp_path))
    w = tmp_path / "cifar_cnn.pt"
    w.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptFileError) as e:
        load_backbone("cifar_cnn")
    assert str(w) in _one_line(e.value) and "fedsim pretrain" in str(e.value)
    marker = tmp_path / "ran"
    import torch

    torch.save({"x": _Planted(marker)}, w)
    with pytest.raises(CorruptFileError):
        load_backbone("cifar_cnn")
    assert not marker.exists()
    torch.save({"not": torch.zeros(2)}, w)
    with pytest.raises(CorruptFileError, match="not the weights"):
        load_backbone("cifar_cnn")


def test_feature_cache_loaded_safely_and_recomputed_when_bad(tmp_path):
    from fedsim.features import cache_dir, features_for

    ds = datasets.load("sklearn_digits")
    good = features_for(ds, "identity", str(tmp_path))
    (path,) = cache_dir(str(tmp_path)).glob("*.npz")
    marker = tmp_path / "ran"
    for planted in (b"garbage", None):
        if planted is None:  # an npz whose arrays are pickled objects
            with open(path, "wb") as fh:
                np.savez(fh, x_train=np.array([_Planted(marker)], dtype=object), x_test=np.zeros(1))
        else:
            path.write_bytes(planted)
        again = features_for(ds, "identity", str(tmp_path), log=lambda m: None)
        assert np.array_equal(again.x_train, good.x_train) and not marker.exists()
    with np.load(path, allow_pickle=False) as z:  # rewritten as a valid cache
        assert z["x_train"].shape == good.x_train.shape
