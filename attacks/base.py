"""Attack interfaces. Pure tensor math; never imports ``fedsim`` (only the leaf :mod:`fedlib`).

* **Update forger** — what Byzantine peers send instead of their honest vectors::

      forged = forger.forge(honest, own, ctx)     # Tensor[m, P], Tensor[k, P] -> Tensor[k, P]

  ``honest`` are the honest vectors of the round when the forger is omniscient
  (``forger.omniscient``) and the scenario allows it; otherwise the engine passes the Byzantine
  peers' own benign-trained vectors (their best estimate of the honest ones). ``own`` are the
  ``k`` Byzantine peers' benign-trained vectors. A forger may return rows with NaN/Inf or a
  tensor whose last dimension is not ``P`` (malformed messages); the engine drops those.
  A forger returning ``None`` means the Byzantine peers stay silent this round.

* **Data poisoner** — transforms a Byzantine peer's training data before local training::

      x, y = poisoner.poison(x, y, ctx)           # Tensor[n, d], Tensor[n] (int64)

Flattened vectors follow :mod:`fedlib.heads`: weight ``[C, d]`` row-major, then bias ``[C]``.

An attack is a dataclass whose fields are its parameters, each declaring what it accepts
(``param(1.0, Real(lo=0, lo_open=True))``, :mod:`fedlib.params`); the base classes check them in
``__post_init__`` (a subclass with more to check calls ``super().__post_init__()`` first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from fedlib.params import validate


@dataclass(frozen=True)
class AttackContext:
    """What an attack may need.

    Attributes:
        n: number of vectors a victim aggregates per round (honest + Byzantine), the papers' ``n``
            (ALIE: Baruch et al.'s ``n`` workers whose vectors the aggregator combines). The
            engine passes the ``n`` the rule's limits are checked with: in decentralized mode
            the mean in-degree, rounded (a victim aggregates its in-neighbours, not every peer),
            in federated mode the clients the server hears per round (all, or those sampled).
        f: number of Byzantine peers (``k`` rows to forge).
        f_received: number of Byzantine vectors among the ``n`` a victim aggregates (ALIE's
            ``f``): the run's ``f``, the one the rule is given (``strategy.f``, else the
            Byzantine share of ``n`` rounded up). None: ``f`` (every Byzantine peer is heard).
        round: current round, 0-based.
        layer_shape: ``(C, d)`` of the output layer; ``bias`` whether a bias follows.
        num_classes: ``C`` (data poisoners).
        generator: seeded randomness (noise attacks, random sampling).
        receiver_own: for receiver-specific attacks (dissensus), the receiving peer's vector.
        receiver_neighbors: for those, the vectors the receiver hears from honest neighbours.
        previous: for a forger with ``lookback = d > 0`` (the stale-model attack), the ``[k, P]``
            vectors the Byzantine peers held ``d`` rounds ago (their benign-trained ``own`` of
            round ``round − d``); None while fewer than ``d`` rounds have passed, and for every
            other forger (the engine keeps a history of ``d`` rounds only where ``d > 0``).
    """

    n: int
    f: int
    f_received: int | None = None
    round: int = 0
    layer_shape: tuple[int, int] = (0, 0)
    bias: bool = True
    num_classes: int = 0
    generator: torch.Generator | None = None
    receiver_own: Tensor | None = None
    receiver_neighbors: Tensor | None = None
    previous: Tensor | None = None


class UpdateForger:
    """Base class of Byzantine update forgers (registered with ``@register``)."""

    name: ClassVar[str] = ""
    omniscient: ClassVar[bool] = False  # needs the honest vectors of the round
    per_receiver: ClassVar[bool] = False  # forges a different message for each receiver
    kind: ClassVar[str] = "forger"
    # reads ctx.f_received (the run's f, strategy.f): where neither the rule nor the forger reads it, a
    # scenario's strategy.f is refused (fedsim.validation); an instance may set it from its parameters
    reads_f: ClassVar[bool] = False
    # reads the ``honest`` argument of forge (omniscient says it *needs* the round's honest vectors;
    # ALIE is not omniscient but reads them): where it does not, a scenario's peers.attack.omniscient
    # is refused (fedsim.validation). True unless a forger declares otherwise (a plugin that does not
    # say is assumed to read them, so its omniscient is never refused wrongly)
    reads_honest: ClassVar[bool] = True
    # sends, on purpose, messages the receivers drop (None, rows with NaN/Inf, or not a [k, P] tensor:
    # fedsim.messages.forged_rows): the faulty behaviours crash, nan and wrong_shape. Every other forger
    # returns k finite rows [k, P] of own's dtype (fedsim.checks.check_forger holds it to that)
    malformed: ClassVar[bool] = False
    # sends nothing at all, every round (forge always returns None): the crash behaviour. Its peers'
    # messages are not counted in bytes_sent_* (fedsim.runfacts.silent_peers, fedsim.simulation.round_metrics)
    silent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Check every parameter against its declared constraint (:func:`fedlib.params.validate`)."""
        validate(self)

    @property
    def lookback(self) -> int:
        """Rounds of the Byzantine peers' own vectors the engine must keep for ``ctx.previous``
        (0: none, no history is kept)."""
        return 0

    def check(self, n: int, f_received: int) -> None:
        """Raise ValueError if the forger is undefined for ``ctx.n = n``,
        ``ctx.f_received = f_received`` (called by validation with the run's values, as
        ``Strategy.check`` is)."""

    def forge(self, honest: Tensor, own: Tensor, ctx: AttackContext) -> Tensor | None:
        raise NotImplementedError


class DataPoisoner:
    """Base class of data poisoning attacks (registered with ``@register``)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "poisoner"

    def __post_init__(self) -> None:
        """Check every parameter against its declared constraint (:func:`fedlib.params.validate`)."""
        validate(self)

    def poison(self, x: Tensor, y: Tensor, ctx: AttackContext) -> tuple[Tensor, Tensor]:
        raise NotImplementedError
