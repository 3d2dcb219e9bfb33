"""A scenario's ``probes:`` entries as the schema holds them: each typed by its registered kind
(:func:`probe_config`: a pydantic model per kind, built from the probe's ``params``;
:func:`to_config`: the dispatch on ``kind``), the values checked by the kind's own ``validate``
(:mod:`fedsim.probe_registry`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, create_model, model_serializer

from fedsim.probe_registry import Probe, check_entry
from fedsim.probe_registry import defaults as probe_defaults


class ProbeConfig(BaseModel):
    """One ``probes:`` entry as the schema holds it: an instance of its kind's model
    (:func:`probe_config`), whose fields are ``kind`` and the probe's ``params``. Dumps only the
    keys given, in the given order, so a resolved ``scenario.yaml`` reads as written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    _keys: tuple[str, ...] = PrivateAttr(default=())

    def settings(self) -> dict[str, Any]:
        """The keys the scenario set (``kind`` first, as given)."""
        return {k: getattr(self, k) for k in self._keys}

    @model_serializer(mode="plain")
    def _dump(self) -> dict[str, Any]:
        return self.settings()


def probe_config(cls: type[Probe]) -> type[ProbeConfig]:
    """The schema's model of a registered probe kind: ``kind: Literal[<kind>]`` and one field per
    key of its ``params``, with its default (values are checked by the probe's own ``validate``).
    Built once per class and kind (a class unregistered and registered again under another kind
    gets that kind's model; :func:`fedsim.probe_registry.register_probe` refuses one class under
    two kinds at once)."""
    return _probe_config(cls, cls.kind)


@functools.cache
def _probe_config(cls: type[Probe], kind: str) -> type[ProbeConfig]:
    fields: dict[str, Any] = {"kind": (Literal[kind], ...)}
    fields |= {k: (Any, v) for k, v in probe_defaults(cls).items()}
    return create_model(f"{cls.__name__}Config", __base__=ProbeConfig, **fields)


def to_config(i: int, data: Any, scenario_plugins: Iterable[str] | None = ()) -> ProbeConfig:
    """``probes[i]`` as its kind's :func:`probe_config` (the union's dispatch on ``kind``, over the
    registered kinds): ``ValueError("probes.<i>...: ...")`` for a non-mapping, an unknown kind or
    an unknown key (:func:`fedsim.probe_registry.check_entry`; ``scenario_plugins``: the
    scenario's ``plugins:``, for its hint)."""
    if isinstance(data, ProbeConfig):
        return data
    probe = check_entry(i, data, scenario_plugins)
    cfg = probe_config(type(probe)).model_validate(data)
    cfg._keys = tuple(data)
    return cfg
