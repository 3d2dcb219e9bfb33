"""The engine hands ``ctx.previous`` (a peer's head before this round's local training) to rules
that need it: it is the head the peer's previous aggregation produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import strategies
from fedsim import api
from strategies.base import AggregationContext, Strategy
from strategies.registry import REGISTRY

CALLS: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []


@dataclass
class PreviousProbe(Strategy):
    """Mean of own and the received vectors; records (round, previous, own, result)."""

    exchanges = "full_model"
    needs: ClassVar[frozenset[str]] = frozenset({"previous"})

    def __call__(self, own: torch.Tensor, received: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
        out = torch.cat([own[None], received]).mean(dim=0)
        CALLS.append((ctx.round, ctx.previous.clone(), own.clone(), out.float().clone()))
        return out


@pytest.fixture
def probe_rule():
    """Registered for this test only (tests that loop over every registered rule must not see it)."""
    strategies.register("test_previous_probe")(PreviousProbe)
    CALLS.clear()
    yield "test_previous_probe"
    REGISTRY.pop("test_previous_probe", None)


def test_previous_is_the_last_aggregation_result(probe_rule, small_scenario, tmp_path):
    api.run(small_scenario(**{"strategy.name": probe_rule, "mode": "decentralized"}), out=tmp_path / "r")
    rounds = sorted({r for r, *_ in CALLS})
    assert rounds == [0, 1, 2, 3] and len(CALLS) == 4 * 8
    by_round = {r: [c for c in CALLS if c[0] == r] for r in rounds}
    for _, prev, own, _ in by_round[0]:  # heads start at 0
        assert not prev.any() and own.any()
    for r in rounds[1:]:
        results = torch.stack([out for *_, out in by_round[r - 1]])
        for _, prev, own, _ in by_round[r]:
            assert bool((results == prev).all(dim=1).any())  # one of last round's results, to the bit
            assert not torch.equal(prev, own)  # and not the trained head
