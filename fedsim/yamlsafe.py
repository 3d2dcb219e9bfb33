"""Bounded YAML reading: scenario files parsed as plain data, never past a size, depth or
value count (no Python objects, no billion laughs), every failure one :class:`ScenarioError` line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fedsim.errors import ScenarioError

MAX_YAML_BYTES = 2**20  # scenario files are a few hundred bytes; a larger one is a mistake (or an attack)
MAX_YAML_DEPTH = 32  # nesting of mappings and lists (the deepest real scenario nests 4)
MAX_YAML_VALUES = 50_000  # scalars, lists and mappings after aliases are expanded (billion laughs: 10^9)


class _YamlLimitError(Exception):
    """A YAML document beyond :data:`MAX_YAML_DEPTH` or :data:`MAX_YAML_VALUES`."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader that stops composing past :data:`MAX_YAML_DEPTH` levels or
    :data:`MAX_YAML_VALUES` nodes, long before Python's recursion limit or memory is reached.
    Aliases compose to the node they name (no copy); their expansion is bounded afterwards by
    :func:`plain_tree`."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _YamlLimitError(f"nested deeper than {MAX_YAML_DEPTH} levels")
            if self._nodes > MAX_YAML_VALUES:
                raise _YamlLimitError(f"more than {MAX_YAML_VALUES} values")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """A mapping whose key appears twice is refused: PyYAML would keep the last value
        silently, so ``rounds: 3`` followed by ``rounds: 400`` runs 400 rounds unseen. Keys
        brought in by a ``<<`` merge may still be overridden, as YAML intends."""
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (a mapping names each key once)", key_node.start_mark
                        )
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class refuses it
                    pass
        return super().construct_mapping(node, deep)


# YAML 1.1 (PyYAML) reads `1e-3` and `1.0e30` as strings (its floats need a dot and a signed
# exponent); with strict types that string would be refused. These are floats, as in YAML 1.2 and
# as `--set` reads them (parse_value).
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_BoundedLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that quotes a string :class:`_BoundedLoader` would read as a float
    (``name: "1e5"``): what :func:`dump_yaml` writes reads back as it was."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


def dump_yaml(data: Any) -> str:
    """``data`` (plain data: a resolved scenario) as YAML that :func:`safe_yaml` reads back equal,
    keys in their order (a run directory's ``scenario.yaml``, the Flower run config's scenario)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _yaml(text: str) -> Any:
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise _YamlLimitError("nested too deeply") from None
    finally:
        loader.dispose()


def safe_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text`` as data (safe loader: no Python objects), refusing documents nested
    deeper than :data:`MAX_YAML_DEPTH` or with more than :data:`MAX_YAML_VALUES` values, with a
    one-line :class:`ScenarioError` naming ``source``."""
    try:
        return _yaml(text)
    except _YamlLimitError as e:
        raise ScenarioError(f"{source}: refused: the YAML is {e} (scenario files are small)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ScenarioError(f"{source}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def read_yaml(path: str | Path) -> Any:
    """The YAML data in ``path``, read safely: at most :data:`MAX_YAML_BYTES` (checked before
    reading), UTF-8, depth and values bounded (:func:`safe_yaml`); every failure is one line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ScenarioError(f"{path}: a directory, not a scenario file")
        if size > MAX_YAML_BYTES:
            raise ScenarioError(f"{path}: {size} bytes; scenario files are at most {MAX_YAML_BYTES // 2**20} MiB")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)  # capped again: a pipe or a growing file has no size
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such file") from None
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ScenarioError(f"{path}: more than {MAX_YAML_BYTES // 2**20} MiB; scenario files are small")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return safe_yaml(text, str(path))


def plain_tree(data: Any, source: str = "scenario") -> Any:
    """A copy of ``data`` in which no dict or list appears twice (YAML aliases share them), refusing
    one that would expand past :data:`MAX_YAML_VALUES` values or nest deeper than
    :data:`MAX_YAML_DEPTH` (a recursive alias nests forever). The copy stops at the limit, so a
    billion-laughs document is refused after 50,000 values, never expanded."""
    count = 0

    def copy(x: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_YAML_VALUES:
            raise ScenarioError(
                f"{source}: refused: more than {MAX_YAML_VALUES} values once YAML aliases are expanded "
                "(scenario files are small)"
            )
        if depth > MAX_YAML_DEPTH:
            raise ScenarioError(f"{source}: refused: nested deeper than {MAX_YAML_DEPTH} levels (or a recursive alias)")
        if isinstance(x, dict):
            return {k: copy(v, depth + 1) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [copy(v, depth + 1) for v in x]
        return x

    return copy(data, 0)
