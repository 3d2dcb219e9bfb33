"""The systemd unit fedsim ships for a device (``fedsim/flower/fedsim-node.service``, shown in
docs/flower.md) and what a supervisor needs from it.

:func:`parse_service` reads the ``[Service]`` settings that keep a device in the federation —
``ExecStart`` (split as systemd splits it, for the plain form the unit uses), ``Restart`` and
``RestartSec`` — and refuses, in one line, what it does not implement (``$VAR`` expansion, ``%``
specifiers, ``-``/``@``/``+``/``!`` prefixes, several ``ExecStart``), so a unit edited beyond that is
not read wrongly. :func:`replace_options` puts one device's values into the command line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

UNIT_FILE = Path(__file__).with_name("fedsim-node.service")
_TIME_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "msec": 1e-3,
               "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0}
_RESTART = ("no", "always", "on-success", "on-failure", "on-abnormal", "on-abort", "on-watchdog")


class UnitError(ValueError):
    """A unit this reader cannot take; the message says which setting, in one line."""


@dataclass(frozen=True)
class Service:
    """The ``[Service]`` settings of a unit that say what runs and when it is started again."""

    exec_start: list[str]  # the command, argv[0] absolute
    restart: str  # systemd's default: "no"
    restart_sec: float  # seconds; systemd's default: 0.1
    user: str | None = None


def read_unit(path: str | Path = UNIT_FILE) -> str:
    return Path(path).read_text()


def _logical_lines(text: str) -> list[str]:
    """Lines as systemd reads them: comments (``#``, ``;``) dropped, a trailing backslash joining
    the next line (the backslash read as a space)."""
    out: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return [x for x in out if x]


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    if not m or m.group(2) not in _TIME_UNITS:
        raise UnitError(f"RestartSec={value}: expected seconds such as 10, 10s, 500ms or 1min")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_service(text: str) -> Service:
    """The ``[Service]`` section of a unit's ``text`` (:class:`UnitError` for what is not supported)."""
    section, settings = "", {}
    exec_start: list[str] = []
    for line in _logical_lines(text):
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise UnitError(f"not a 'Key=value' line: {line!r}")
        if section != "Service":
            continue
        key, value = key.strip(), value.strip()
        if key == "ExecStart":
            exec_start.append(value)
        else:
            settings[key] = value
    if len(exec_start) != 1:
        raise UnitError(f"expected one ExecStart= in [Service], found {len(exec_start)}")
    cmd = exec_start[0]
    if cmd and cmd[0] in "-@+!:":
        raise UnitError(f"ExecStart prefix {cmd[0]!r} is not supported by this reader")
    if "$" in cmd or "%" in cmd:
        raise UnitError("ExecStart with $VARIABLES or %specifiers is not supported by this reader: write the values")
    argv = shlex.split(cmd)
    if not argv or not argv[0].startswith("/"):
        raise UnitError(f"ExecStart must start with an absolute path, got {argv[:1]}")
    restart = settings.get("Restart", "no")
    if restart not in _RESTART:
        raise UnitError(f"Restart={restart}: expected one of {', '.join(_RESTART)}")
    return Service(argv, restart, _seconds(settings.get("RestartSec", "100ms")), settings.get("User"))


def replace_options(argv: Sequence[str], values: Mapping[str, str], executable: str | None = None) -> list[str]:
    """``argv`` with the value after each option in ``values`` replaced (every one must be there:
    a unit that lost an option is an error, not a silent default), and argv[0] by ``executable``."""
    out = list(argv)
    if executable is not None:
        out[0] = executable
    for opt, value in values.items():
        if opt not in out[1:-1]:
            raise UnitError(f"ExecStart has no {opt} VALUE")
        out[out.index(opt, 1) + 1] = str(value)
    return out
