"""A round's record (:class:`RoundRecord`), what :class:`fedsim.simulation.Simulation` yields and
:func:`fedsim.runfiles.read_records` reads back from a run directory; NumPy only, so reading a
run's records imports no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PHASES = ("train", "aggregate", "evaluate")


@dataclass(frozen=True)
class RoundRecord:
    """One round, as the simulation saw it.

    ``metrics``: the round's ``metrics.jsonl`` record (before strict-JSON sanitising,
    :func:`fedsim.rundir.metrics_line`): ``round``, ``train_loss``, ``dropped``, ``skipped``,
    bytes, and on evaluation rounds ``accuracy_mean`` and friends. ``phases``: wall seconds the
    driver waited for each phase of :data:`PHASES` (``evaluate`` is 0.0 on rounds without
    evaluation). On Ray, *train* ends when every group's train loss has arrived and *aggregate*
    when every group (or the server) has aggregated; both include the object-store transfers."""

    round: int
    metrics: dict[str, Any]
    phases: dict[str, float]
    # the heads every peer sent this round ``[N, P]`` (after local training, before any Byzantine
    # forgery), kept only in the last ``Simulation.record_messages`` rounds (the probes that read the
    # gossip: fedsim.probe_gossip, the unlearning probe's rollback); None otherwise (no copy, no cost)
    messages: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        """Training + aggregation (what ``timings.jsonl``'s ``seconds`` has always held; evaluation apart)."""
        return self.phases["train"] + self.phases["aggregate"]

    @property
    def evaluated(self) -> bool:
        return "accuracy_mean" in self.metrics
