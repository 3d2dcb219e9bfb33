"""Expected failures, as one type the CLI knows.

Every error fedsim expects (a bad scenario, a run directory that exists, a corrupt or unsafe
file, a resume that does not match its checkpoint, an interrupted run) is a
:class:`FedsimError`: ``str()`` is one line, which the command line prints as it is, with the
command to run next where one helps. Anything else reaching the CLI is a bug: it prints one
line and where the log with the traceback is.
"""

from __future__ import annotations


class FedsimError(Exception):
    """An expected failure; ``str()`` is always one line."""

    def __init__(self, message: object) -> None:
        super().__init__(" ".join(str(message).split()))


class CorruptFileError(FedsimError, ValueError):
    """A file fedsim reads is truncated, corrupt, of the wrong format, or unsafe to load; the
    message names the file."""


class ScenarioError(FedsimError, ValueError):
    """A scenario that cannot run; ``str()`` is one line naming the field and the fix.

    ``errors`` holds each problem as its own line (``source: field: message``) for
    ``fedsim validate``, which prints one line per error; ``str()`` joins them with ``; ``."""

    def __init__(self, message: object, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors = [" ".join(str(e).split()) for e in errors] if errors else [str(self)]


class ResumeMismatchError(FedsimError, ValueError):
    """``--resume`` on a run directory whose checkpoint, metrics or scenario do not agree."""


class RunDirExistsError(FedsimError, FileExistsError):
    """The run directory exists and neither --overwrite nor --resume was given."""


class RunInterruptedError(FedsimError, RuntimeError):
    """The run stopped early (Ctrl-C, or a peer actor died); it can be resumed from its checkpoint."""


class ProbeResultError(FedsimError, TypeError):
    """A probe's ``run`` returned something that is not its ``probes.json`` entry (a mapping with
    its ``kind``); the message names the probe and what it returned, ``problem`` says what is wrong
    (:func:`fedsim.probe_registry.entry_problem`)."""

    def __init__(self, message: str, problem: str = "") -> None:
        super().__init__(message)
        self.problem = problem


def probe_error(i: int, key: str, msg: str) -> ValueError:
    """The error of a bad value in ``probes[i]``: ``probes.<i>.<key>: msg`` (a ``ValueError``)."""
    return ValueError(f"probes.{i}.{key}: {msg}")
