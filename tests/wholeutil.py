"""Shared by the whole-model tests: one in-process WholePeerGroup of a scenario's first set-up."""

from __future__ import annotations

from typing import Any

from fedsim.prepare import prepare
from fedsim.whole import WholePeerGroup


def group(sc: Any) -> tuple[Any, WholePeerGroup]:
    """``(prepare(sc), the WholePeerGroup of its first set-up on the prepared features)``."""
    prep = prepare(sc)
    f = prep.features
    feats = {"x_train": f.x_train, "y_train": f.y_train, "x_test": f.x_test, "y_test": f.y_test}
    return prep, WholePeerGroup(prep.setups[0], feats)
