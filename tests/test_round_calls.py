"""The calls a round makes (issue 19 item 2): on a lazy backend (Ray) the aggregation is submitted
before the driver waits, and in federated mode the server's aggregation reply carries the next
round's global model, so the server is asked for it once, not every round."""

from __future__ import annotations

import pytest

from fedsim.backend import LocalBackend
from fedsim.peers import PeerGroup
from fedsim.prepare import prepare
from fedsim.scenario import parse
from fedsim.server import Server
from fedsim.simulation import Simulation


def _events(monkeypatch, sc, lazy: bool, rounds: int) -> list[str]:
    events: list[str] = []

    def spy(cls, name):
        real = getattr(cls, name)

        def wrapped(self, *a, **kw):
            events.append(name)
            return real(self, *a, **kw)

        monkeypatch.setattr(cls, name, wrapped)

    for cls, name in ((PeerGroup, "train"), (PeerGroup, "aggregate"), (Server, "get_global"),
                      (Server, "aggregate_and_global")):
        spy(cls, name)
    backend = LocalBackend()
    backend.lazy = lazy  # a LocalBackend runs each call when made: the order of the calls is what is tested
    real_get = backend.get
    backend.get = lambda refs: (events.append("get"), real_get(refs))[1]
    sim = Simulation(sc, prepare(sc), backend)
    events.clear()
    for r in range(rounds):
        sim.step(r)
        events.append("|")
    return events


@pytest.mark.parametrize("lazy", [True, False])
def test_federated_rounds_ask_for_the_global_model_once(monkeypatch, small_scenario, lazy):
    sc = parse(small_scenario(mode="federated", rounds=10, evaluation={"every": 100}))
    ev = _events(monkeypatch, sc, lazy, 3)
    assert ev.count("get_global") == 1 and ev.count("aggregate_and_global") == 3
    first = ev[: ev.index("|")]
    if lazy:  # submitted before the driver waits for the losses
        assert first == ["get_global", "train", "train", "aggregate_and_global", "get", "get"]
    else:  # in-process: train, wait, aggregate, so the phases are timed apart
        assert first == ["get_global", "train", "train", "get", "aggregate_and_global", "get"]


def test_decentralized_aggregation_is_submitted_before_the_wait(monkeypatch, small_scenario):
    sc = parse(small_scenario(rounds=10, evaluation={"every": 100}))
    ev = _events(monkeypatch, sc, True, 1)
    assert ev == ["train", "train", "aggregate", "aggregate", "get", "get", "|"]
