"""The field framework of the parameters: one validated dataclass field per key, and its JSON Schema.

`spec(...)` declares a field with its help text and rules (`min`, `max`, `choices`, `items`, ...);
`from_dict` builds a dataclass from a plain dict, rejecting unknown keys, wrong types and values out of
range with a one-line `ParamError` that names the dotted key, the value and what is allowed;
`dataclass_schema` derives the JSON Schema from the same metadata, so the two cannot drift. It imports
nothing heavy, so the Snakefile can validate in well under a second.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import field
from typing import Any

from autoqra.errors import ParamError


def spec(default: Any = dataclasses.MISSING, *, help: str, **rules: Any) -> Any:
    """A dataclass field with a help text and validation rules (min, max, choices, items...)."""
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **rules}, **kw)



def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_scalar(key: str, value: Any, tp: Any) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamError(f"{key}={value!r}: must be of type {_type_name(tp)}")
    return value


def _check_rules(key: str, value: Any, rules: dict[str, Any]) -> None:
    lo, hi = rules.get("min"), rules.get("max")
    if lo is not None and (value < lo or (rules.get("exclusive_min") and value == lo)):
        raise ParamError(f"{key}={value!r}: must be {'>' if rules.get('exclusive_min') else '>='} {lo}")
    if hi is not None and value > hi:
        raise ParamError(f"{key}={value!r}: must be <= {hi}")
    if "choices" in rules and value not in rules["choices"]:
        allowed = ", ".join(map(str, rules["choices"]))
        raise ParamError(f"{key}={value!r}: must be one of {allowed}")
    if "pattern" in rules and not re.match(rules["pattern"], value):
        raise ParamError(f"{key}={value!r}: must match {rules['pattern']}")


def _check_value(key: str, value: Any, tp: Any, rules: dict[str, Any]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(f"{key}={value!r}: must be a list of {_type_name(args[0])}")
        items = [_check_value(f"{key}[{i}]", v, args[0], rules.get("items", {})) for i, v in enumerate(value)]
        if len(items) < rules.get("min_items", 0):
            raise ParamError(f"{key}={value!r}: needs at least {rules['min_items']} item(s)")
        if rules.get("unique") and len(set(items)) != len(items):
            raise ParamError(f"{key}={value!r}: items must be unique")
        if rules.get("increasing") and any(a >= b for a, b in zip(items, items[1:])):
            raise ParamError(f"{key}={value!r}: must be strictly increasing")
        return items
    value = _check_scalar(key, value, tp)
    _check_rules(key, value, rules)
    return value


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, rejecting unknown keys, wrong types and bad values."""
    where = prefix or "params"
    if not isinstance(data, dict):
        raise ParamError(f"{where}={data!r}: must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields)
            raise ParamError(f"{prefix + '.' if prefix else ''}{key}: unknown key (allowed in {where}: {allowed})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            values[name] = _check_value(key, data[name], hints[name], dict(f.metadata))
    return cls(**values)



def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a params dataclass (what `params.yaml` holds)."""
    return dataclasses.asdict(obj)


# ----------------------------------------------------------------------------- JSON Schema

def _schema_of(tp: Any, rules: dict[str, Any]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return {"anyOf": [_schema_of(inner, rules), {"type": "null"}]}
    if dataclasses.is_dataclass(tp):
        return dataclass_schema(tp)
    if origin is list:
        out = {"type": "array", "items": _schema_of(args[0], rules.get("items", {}))}
        if "min_items" in rules:
            out["minItems"] = rules["min_items"]
        if rules.get("unique"):
            out["uniqueItems"] = True
        return out
    out: dict[str, Any] = {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[tp]}
    if "min" in rules:
        out["exclusiveMinimum" if rules.get("exclusive_min") else "minimum"] = rules["min"]
    if "max" in rules:
        out["maximum"] = rules["max"]
    if "choices" in rules:
        out["enum"] = list(rules["choices"])
    if "pattern" in rules:
        out["pattern"] = rules["pattern"]
    return out


def dataclass_schema(cls: type) -> dict[str, Any]:
    """JSON Schema (draft 7) of a params dataclass, from its type hints and field rules."""
    hints = typing.get_type_hints(cls)
    props = {}
    for f in dataclasses.fields(cls):
        props[f.name] = {"description": f.metadata.get("help", ""), **_schema_of(hints[f.name], dict(f.metadata))}
    return {"type": "object", "additionalProperties": False, "required": list(props), "properties": props}


