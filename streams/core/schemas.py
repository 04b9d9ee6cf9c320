"""JSON Schemas of the public payloads and files, compiled once (fastjsonschema)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import orjson

Validator = Callable[[Any], Any]


def schema_dir() -> Path:
    """``schemas/`` of the checkout, or the copy packed into the wheel as ``streams/schemas``."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "schemas", here.parent / "schemas"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no schemas/ directory next to {here}")


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = orjson.loads((schema_dir() / f"{name}.schema.json").read_bytes())
    return schema


@lru_cache(maxsize=None)
def validator(name: str) -> Validator:
    return fastjsonschema.compile(load_schema(name))  # type: ignore[no-any-return]


def explain(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """A validation failure as one line a person can act on."""
    path = exc.name.replace("data", "", 1).lstrip(".") if exc.name else ""
    where = f"{path}: " if path else ""
    if exc.rule == "required":
        missing = re.findall(r"'([^']+)'", exc.message)
        return f"{where}missing required field(s): {', '.join(missing)}"
    message = exc.message
    if exc.name and message.startswith(exc.name):
        message = message[len(exc.name):].strip()
    value = repr(exc.value)
    if len(value) > 60:
        value = value[:57] + "..."
    return f"{where or 'message '}{message} (got {value})"


# ----------------------------------------------------------------------------- the hot path
#
# fastjsonschema costs ~15 µs per CDR — as much as all the fair-use rules. Nearly every message is
# valid, so the boundary first runs ``quick_check``: a check built from the same schema file that
# answers True only for an object the schema certainly accepts (plain str/int/None values within
# the bounds). Anything else — every invalid message, and valid oddities such as ``billsec: 61.0``
# — goes through the full validator, which decides and words the DLQ reason.

_META = frozenset({"$schema", "$id", "title", "description"})
_OBJECT = frozenset({"type", "required", "properties", "if", "then"}) | _META
_FIELD = frozenset({"type", "minLength", "maxLength", "enum", "const", "minimum", "maximum"}) | _META
_PYTHON_TYPES = {"string": str, "integer": int, "null": type(None)}

Check = Callable[[dict[str, Any]], bool]


def _field_check(spec: dict[str, Any]) -> Callable[[Any], bool] | None:
    """True only for a value the field's schema accepts; None when the spec is beyond this subset."""
    if not set(spec) <= _FIELD:
        return None
    choices = spec.get("enum", [spec["const"]] if "const" in spec else None)
    if choices is not None and not all(isinstance(c, str) for c in choices):
        return None
    names = spec.get("type", [] if choices is None else ["string"])  # an enum of strings: strings
    names = [names] if isinstance(names, str) else list(names)
    if not names or any(n not in _PYTHON_TYPES for n in names):
        return None
    types = tuple(_PYTHON_TYPES[n] for n in names)
    allowed = frozenset(choices) if choices is not None else None
    lo_len, hi_len = spec.get("minLength", 0), spec.get("maxLength")
    lo, hi = spec.get("minimum"), spec.get("maximum")

    def check(value: Any) -> bool:
        kind = type(value)  # exact types: a JSON true is a bool, which the schema's integer refuses
        if kind not in types:
            return False
        if kind is str:
            return (allowed is None or value in allowed) and lo_len <= len(value) and (
                hi_len is None or len(value) <= hi_len)
        if kind is int:
            return allowed is None and (lo is None or value >= lo) and (hi is None or value <= hi)
        return allowed is None or None in allowed

    return check


def _object_check(schema: dict[str, Any]) -> Check | None:
    if not set(schema) <= _OBJECT or schema.get("type", "object") != "object":
        return None
    fields = {}
    for name, spec in schema.get("properties", {}).items():
        check = _field_check(spec)
        if check is None:
            return None
        fields[name] = check
    required = tuple(schema.get("required", ()))
    condition = then = None
    if "if" in schema or "then" in schema:
        # supported: `if` of string consts on properties, `then` of more required fields
        condition = _consts(schema.get("if", {}))
        then = schema.get("then", {})
        if condition is None or set(then) - {"required"}:
            return None
    extra = tuple(then.get("required", ())) if then else ()
    checks = tuple(fields.items())

    def check(data: dict[str, Any]) -> bool:
        for name in required:
            if name not in data:
                return False
        for name, ok in checks:
            if name in data and not ok(data[name]):
                return False
        if condition is not None and all(name not in data or data[name] == value for name, value in condition):
            return all(name in data for name in extra)
        return True

    return check


def _consts(schema: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    if set(schema) - {"properties"}:
        return None
    out = []
    for name, spec in schema.get("properties", {}).items():
        if set(spec) != {"const"} or not isinstance(spec["const"], str):
            return None
        out.append((name, spec["const"]))
    return tuple(out)


@lru_cache(maxsize=None)
def quick_check(name: str) -> Check:
    """The hot-path check of a payload schema (see above); ``lambda _: False`` when the schema uses
    something it does not model, so that everything then takes the full validator."""
    return _object_check(load_schema(name)) or (lambda _data: False)
