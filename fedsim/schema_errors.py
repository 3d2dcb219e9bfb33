"""Pydantic's validation errors as fedsim's one-line messages (:func:`_messages`: one
``field: message`` per error, naming the closest allowed key or value; :func:`_show`: a short
YAML-like rendering of an offending input), for :mod:`fedsim.scenario` and :mod:`fedsim.validation`.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ValidationError

from fedlib.registry import did_you_mean as _did_you_mean
from fedsim.schema import Scenario


def _model_at(loc: tuple) -> Any:
    """The schema section (a pydantic model) that holds the last key of ``loc``, or None."""
    model: Any = Scenario
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        sub = field.annotation if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _unknown_key(loc: tuple) -> str:
    """The message for a key the schema does not have at ``loc``: the closest allowed key and all of them."""
    model = _model_at(loc[:-1])
    if model is None:
        return "unknown key (check its spelling)"
    keys = list(model.model_fields)
    return f"unknown key{_did_you_mean(loc[-1], keys)}; allowed here: {', '.join(keys)}"


def _description(loc: tuple) -> str | None:
    """The schema's ``description`` of the field at ``loc`` (what a pattern stands for), if any."""
    model = _model_at(loc[:-1])
    field = model.model_fields.get(loc[-1]) if model is not None and loc and isinstance(loc[-1], str) else None
    return field.description if field is not None else None


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))


def _show(value: Any) -> str:
    """A short rendering of an offending input, YAML-like (``true``, ``'5'``)."""
    text = {True: "true", False: "false", None: "null"}.get(value, None) if isinstance(value, bool | None) else None
    text = text or repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _messages(e: ValidationError) -> list[str]:
    """One ``field: message`` per pydantic error."""
    out = []
    for err in e.errors():
        loc, msg = _loc(err), err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(err["loc"])
        elif err["type"] == "literal_error":
            allowed = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            msg = f"got {err.get('input')!r}{_did_you_mean(err.get('input'), allowed)}; {msg.lower()}"
        elif err["type"] in ("int_type", "float_type", "bool_type", "string_type", "finite_number", "dict_type"):
            msg = f"{msg}, got {_show(err.get('input'))} (types are strict: no true for a number, no '5' for 5)"
        elif err["type"] == "list_type":  # `plugins: my.py` for `plugins: [my.py]`
            value = err.get("input")
            msg = f"{msg}, got {_show(value)}" + (f"; write a YAML list: [{value}]" if isinstance(value, str) else "")
        elif err["type"] == "string_pattern_mismatch":  # a regex alone does not teach: say what it stands for
            about = _description(err["loc"])
            msg = f"{msg}, got {_show(err.get('input'))}" + (f": {about}" if about else "")
        if loc and re.match(rf"{re.escape(loc)}\.[\w.]+\s*[:=]", msg):
            loc = ""  # a model validator's message that already names its field
        out.append(f"{loc}: {msg}" if loc else msg)
    return out
