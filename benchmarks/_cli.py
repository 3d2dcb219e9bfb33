"""The benchmark scripts' command lines: an argparse parser whose errors are one line, and the
``type=`` validators they share (each raises :class:`argparse.ArgumentTypeError`, which argparse
turns into ``<script>: error: argument --x: <message>``, exit status 2, before anything runs).

Standard library only: a script's bad arguments are refused whatever it imports next."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """:class:`argparse.ArgumentParser` whose error is the one line ``prog: error: message``
    (no usage block; ``--help`` still prints it), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def parser(doc: str | None, **kw: object) -> Parser:
    """A :class:`Parser` described by the first paragraph of a script's docstring."""
    return Parser(description=(doc or "").split("\n\n")[0], **kw)  # type: ignore[arg-type]


def _ints(text: str, lo: int) -> list[int] | None:
    try:
        out = [int(t) for t in text.split(",")]
    except ValueError:
        return None
    return out if out and min(out) >= lo else None


def counts(text: str) -> list[int]:
    """Comma-separated integers >= 1 (``"100,1000"``)."""
    out = _ints(text, 1)
    if out is None:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    return out


def indices(text: str) -> list[int]:
    """Comma-separated integers >= 0 (seeds, rounds: ``"0,1,2"``)."""
    out = _ints(text, 0)
    if out is None:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return out


def _one(kind: Callable[[str], list[int]], bound: str) -> Callable[[str], int]:
    def one(text: str) -> int:
        try:
            out = kind(text)
        except argparse.ArgumentTypeError:
            out = []
        if len(out) != 1:
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return out[0]
    return one


count = _one(counts, ">= 1")
count.__doc__ = "One integer >= 1."
index = _one(indices, ">= 0")
index.__doc__ = "One integer >= 0."


def _real(text: str, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (v > 0 if positive else v >= 0) or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number {'> 0' if positive else '>= 0'}, got {text!r}")
    return v


def positive(text: str) -> float:
    """A finite number > 0."""
    return _real(text, True)


def nonnegative(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, False)


def existing_dir(text: str) -> Path:
    """A directory that exists."""
    p = Path(text)
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return p


def existing_file(text: str) -> Path:
    """A file that exists."""
    p = Path(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text!r}")
    return p


def key_value(text: str) -> str:
    """``KEY=VALUE`` with a non-empty key (a ``--set`` override), returned as given."""
    if not text.partition("=")[0].strip() or "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return text
