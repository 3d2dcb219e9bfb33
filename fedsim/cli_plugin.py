"""The ``--plugin`` option every command that reads a scenario shares (``run``, ``validate``,
``sweep``; ``list`` and ``pretrain`` say what it does for them): the user's own rules', attacks',
backbones' and probes' files or modules. A plugin is code; fedsim imports one only when it is
named here or in Python, never because a scenario file lists it (:mod:`fedsim.plugins`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

RUN_HELP = (
    "Your own rule, attack, backbone or probe: a .py file or a module, imported before the scenario "
    "is read and recorded in the run's plugins: (repeatable). A scenario that lists a plugin not given "
    "here is refused: a scenario file never runs code by itself (docs/extending.md)."
)


def plugin_option(help: str = RUN_HELP) -> Callable[[Any], Any]:
    """``--plugin FILE_OR_MODULE`` (repeatable), passed as ``plugin_entries``."""
    return click.option("--plugin", "plugin_entries", multiple=True, metavar="FILE_OR_MODULE", help=help)
