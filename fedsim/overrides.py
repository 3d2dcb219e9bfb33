"""``--set`` overrides: ``KEY=VALUE`` read as YAML scalars, and dotted keys set in a scenario mapping."""

from __future__ import annotations

import re
from typing import Any

import yaml

from fedsim.errors import ScenarioError
from fedsim.yamlsafe import _yaml, _YamlLimitError

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """One grid value: YAML scalar (``0.3``, ``krum``, ``true``, ``{f: 1}``); ``1e-3`` is a float."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text
    except _YamlLimitError as e:
        raise ScenarioError(f"{text[:40]!r}: refused: the YAML is {e}") from None


def parse_set(item: str) -> tuple[str, Any]:
    """``"rounds=20"`` → ``("rounds", 20)``: one dotted override, the value read by
    :func:`parse_value`. The one parser of ``--set`` (``fedsim run``, ``fedsim sweep``,
    ``fedsim flower``) and of the Flower run config's ``set`` key."""
    if "=" not in item:
        raise ScenarioError(f"{item!r}: expected KEY=VALUE, e.g. strategy.name=krum")
    k, val = item.split("=", 1)
    k = k.strip()
    if not k or "" in k.split("."):
        raise ScenarioError(f"{item!r}: the key before '=' is empty or has an empty part; "
                            "expected KEY=VALUE, e.g. strategy.name=krum")
    return k, parse_value(val)


def parse_sets(values: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("rounds=20", "strategy.name=krum")`` → ``{"rounds": 20, "strategy.name": "krum"}`` (``--set``)."""
    import click

    out = {}
    for v in values:
        try:
            k, val = parse_set(v)
        except ScenarioError as e:
            raise click.BadParameter(str(e), param_hint="--set") from None
        out[k] = val
    return out


def set_dotted(data: dict, key: str, value: Any) -> None:
    """``set_dotted(d, "strategy.params.f", 2)`` sets ``d["strategy"]["params"]["f"] = 2``. A number
    indexes an existing list: ``probes.0.method`` sets the first probe's ``method`` (an index past the
    end is a one-line :class:`ScenarioError`, nothing is set)."""
    parts = key.split(".")
    node: Any = data
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                where = ".".join(parts[:i])
                raise ScenarioError(f"--set {key}: {where} is a list of {len(node)}; "
                                    f"use an index 0..{len(node) - 1} after {where}.")
            if last:
                node[int(p)] = value
            else:
                node = node[int(p)]
            continue
        if not isinstance(node, dict):  # a list's element that is a number or text: nothing below it
            where = ".".join(parts[:i])
            raise ScenarioError(f"--set {key}: {where} is {node!r}, not a mapping")
        if last:
            node[p] = value
        else:
            if not isinstance(node.get(p), dict | list):
                node[p] = {}
            node = node[p]
