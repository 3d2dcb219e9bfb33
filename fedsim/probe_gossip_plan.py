"""What the scenario alone decides about a ``gossip_cloning`` probe, checked once by validation
(:meth:`fedsim.probe_builtins.GossipCloning.check_scenario`, before anything runs) and again by the
probe itself (:func:`fedsim.probe_gossip.run_gossip_cloning`). Imports no torch: validation and
``fedsim list`` read it."""

from __future__ import annotations

from typing import Any

from fedsim.errors import probe_error


def gossip_problems(i: int, cfg: dict[str, Any], rounds: int, federated: bool, byzantine: int) -> None:
    """``ValueError("probes.<i>.<key>: ...")`` for a ``gossip_cloning`` probe ``cfg`` that the run
    cannot serve: federated mode (no gossip), Byzantine peers (the kept messages are the heads
    before any forgery), a horizon in ``rounds_observed`` past the run's ``rounds``."""
    if federated:
        raise probe_error(i, "kind", "gossip_cloning needs a decentralized run (federated mode has no gossip)")
    if byzantine:
        raise probe_error(i, "kind", "gossip_cloning runs without Byzantine peers only (the kept messages are the "
                          "heads before any forgery)")
    top = max(int(h) for h in cfg["rounds_observed"])
    if top > rounds:
        raise probe_error(i, "rounds_observed", f"at most the run's {rounds} rounds, got {top}")
