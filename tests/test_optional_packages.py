"""A dataset that needs a package fedsim does not require names the pip package to install."""

from __future__ import annotations

import sys

import pytest

from fedsim.data import bundled


def test_sklearn_digits_without_scikit_learn_names_the_pip_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` now raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError) as e:
        bundled.sklearn_digits()
    assert "pip install scikit-learn" in str(e.value) and "\n" not in str(e.value)
