"""Callbacks: code that watches a run round by round, and may end it early.

A callback is any object with an ``on_round(record)`` method; ``on_start`` and ``on_end`` are
optional. Subclass :class:`Callback` to get no-op defaults::

    class Callback:
        def on_start(self, sc: Scenario, start: int) -> None: ...      # before the first round (start > 0: a resume)
        def on_round(self, record: RoundRecord) -> Stop | None: ...     # after each round
        def on_end(self, summary: dict | None) -> None: ...             # always; None unless the run completed

``on_round`` runs after the round's line is in ``metrics.jsonl`` (and after its periodic
checkpoint), in the order the callbacks were given; it receives the round's
:class:`~fedsim.simulation.RoundRecord` (metrics and phase timings). Returning a :class:`Stop`
ends the run after that round: with ``checkpoint=True`` (the default) the state is saved so
``fedsim run --resume`` (or ``Run.execute(resume=True)``) continues it and gives the bytes an
uninterrupted run gives. Every callback still sees the round before the run stops.

``fedsim run``'s progress bar, Ctrl-C and the tests' simulated kill are callbacks
(:class:`Progress`, :class:`Interrupt`, :class:`StopAfter`); the Python API takes more with
``fedsim.run(..., callbacks=[...])``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.scenario import Scenario
    from fedsim.simulation import RoundRecord


@dataclass(frozen=True)
class Stop:
    """A callback's request to end the run after the round it saw.

    ``checkpoint``: save the state first, so the run can be resumed from this round (``False``
    leaves the run as a kill would: resumable from its last periodic checkpoint).
    ``interrupt``: end with :class:`~fedsim.errors.RunInterruptedError` (Ctrl-C's one line naming
    the resume command) instead of returning ``{"stopped_after": round}``."""

    reason: str = "stopped by a callback"
    checkpoint: bool = True
    interrupt: bool = False


def checked(callbacks: Any) -> list[Any]:
    """``callbacks`` as a list, each with an ``on_round(record)`` method; ``TypeError`` naming what
    is wrong otherwise (a lone callback or function instead of a list, an object without
    ``on_round``): checked by :func:`fedsim.run` before its run directory is made, and by
    :meth:`fedsim.runner.Run.execute`."""
    fix = "wrap a function f(round, metrics) in fedsim.callbacks.Progress(f)"
    if callable(getattr(callbacks, "on_round", None)) or callable(callbacks) or isinstance(callbacks, (str, bytes)):
        what = type(callbacks).__name__ if callable(getattr(callbacks, "on_round", None)) else "a function"
        if isinstance(callbacks, (str, bytes)):
            what = "a string"
        raise TypeError(f"callbacks: expected a list of callbacks, got {what}: write callbacks=[...] "
                        f"(each with on_round(record); {fix})")
    try:
        items = list(callbacks)
    except TypeError:
        raise TypeError(f"callbacks: expected a list of callbacks, got {type(callbacks).__name__}") from None
    for i, cb in enumerate(items):
        if not callable(getattr(cb, "on_round", None)):
            raise TypeError(f"callbacks[{i}]: {type(cb).__name__} has no on_round(record) method "
                            f"(a fedsim.callbacks.Callback; {fix})")
    return items


class Callback:
    """No-op defaults for the callback protocol (module docstring)."""

    def on_start(self, sc: Scenario, start: int) -> None:
        """Before round ``start`` runs (0, or the first round after a resume's checkpoint)."""

    def on_round(self, record: RoundRecord) -> Stop | None:
        """After round ``record.round``; return :class:`Stop` to end the run here."""
        return None

    def on_end(self, summary: dict[str, Any] | None) -> None:
        """When the run ends, however it ends; ``summary`` only when it completed."""


class Progress(Callback):
    """Calls ``fn(round, metrics)`` after every round (the CLI's progress bar, the sweep's)."""

    def __init__(self, fn: Callable[[int, dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_round(self, record: RoundRecord) -> None:
        self.fn(record.round, record.metrics)


class StopAfter(Callback):
    """Ends the run after round ``round`` as a kill would (no checkpoint of its own, unless
    ``checkpoint``): tests use it to leave a run to resume."""

    def __init__(self, round_: int, checkpoint: bool = False) -> None:
        self.round, self.checkpoint = int(round_), checkpoint

    def on_round(self, record: RoundRecord) -> Stop | None:
        if record.round >= self.round:
            return Stop(f"stop_after={self.round}", checkpoint=self.checkpoint)
        return None


class Interrupt(Callback):
    """Ctrl-C (SIGINT) finishes the round, saves a checkpoint and stops with the resume command.

    Takes SIGINT over from :meth:`on_start` to :meth:`on_end` (only in the main thread; elsewhere
    Python delivers no signals). ``requested`` tells whether Ctrl-C arrived."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def on_start(self, sc: Scenario, start: int) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True

    def _handle(self, *_: object) -> None:
        self.requested = True

    def on_round(self, record: RoundRecord) -> Stop | None:
        return Stop("interrupted", checkpoint=True, interrupt=True) if self.requested else None

    def on_end(self, summary: dict[str, Any] | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
