"""npz datasets (issue 16, item 5): labels must be 0..C-1; anything else is one line saying how to
map them (y - 1 for 1..C, np.unique's inverse for any other set), at validation, before a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from fedsim.cli import main
from fedsim.data.datasets import load
from fedsim.errors import CorruptFileError


def _npz(tmp_path: Path, y: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.normal(size=(len(y), 4)).astype(np.float32), y=y)
    return path


def test_labels_1_to_c_say_y_minus_1(tmp_path: Path) -> None:
    path = _npz(tmp_path, np.repeat(np.arange(1, 4), 20))
    with pytest.raises(CorruptFileError) as e:
        load("npz", path)
    msg = str(e.value)
    assert "labels must be the classes 0..C-1" in msg and "found 3 distinct values 1..3" in msg
    assert msg.endswith("they are 1..3: save y - 1 instead") and "\n" not in msg, msg


@pytest.mark.parametrize("labels", [[0, 5, 7], [-1, 0, 1], [10, 20, 30]])
def test_other_label_sets_say_how_to_map_them(tmp_path: Path, labels: list[int]) -> None:
    path = _npz(tmp_path, np.repeat(np.asarray(labels), 20))
    with pytest.raises(CorruptFileError) as e:
        load("npz", path)
    msg = str(e.value)
    assert f"found 3 distinct values {min(labels)}..{max(labels)}" in msg, msg
    assert "map them to 0..2 before saving, e.g. names, codes = np.unique(" in msg and "\n" not in msg, msg


def test_string_labels_say_how_to_map_them(tmp_path: Path) -> None:
    path = _npz(tmp_path, np.repeat(np.asarray(["cat", "dog"]), 20))
    with pytest.raises(CorruptFileError, match=r"y must hold integer class labels 0\.\.C-1, got dtype <U3; "
                                               r"map them before saving, e\.g\. names, codes = np\.unique"):
        load("npz", path)


def test_labels_0_to_c_minus_1_load(tmp_path: Path) -> None:
    ds = load("npz", _npz(tmp_path, np.repeat(np.arange(3), 20)))
    assert ds.num_classes == 3 and set(np.unique(ds.y_train)) == {0, 1, 2}


def test_validate_reports_it_in_one_line(tmp_path: Path) -> None:
    path = _npz(tmp_path, np.repeat(np.arange(1, 4), 20))
    sc = tmp_path / "s.yaml"
    sc.write_text(yaml.safe_dump({"dataset": {"name": "npz", "data_dir": str(path)}, "backbone": {"name": "identity"},
                                  "peers": {"count": 4}, "topology": {"kind": "complete"}}))
    r = CliRunner().invoke(main, ["validate", str(sc)])
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0].startswith(f"{sc}: dataset.data_dir: ") and lines[0].endswith("save y - 1 instead"), lines[0]
