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
    return fastjsonschema.compile(load_schema(name))


def explain(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """A validation failure as one line a person can act on."""
    path = exc.name.replace("data", "", 1).lstrip(".") if exc.name else ""
    where = f"{path}: " if path else ""
    if exc.rule == "required":
        missing = re.findall(r"'([^']+)'", exc.message)
        return f"{where}missing required field(s): {', '.join(missing)}"
    if path.endswith("time") and exc.rule in ("minLength", "maxLength") and isinstance(exc.value, str):
        return (f"{path}: expected an RFC 3339 time with its UTC offset, e.g. 2026-11-03T09:15:02+01:00 "
                f"(got {exc.value[:60]!r}{': the offset is missing' if exc.rule == 'minLength' else ''})")
    message = exc.message
    if exc.name and message.startswith(exc.name):
        message = message[len(exc.name):].strip()
    value = repr(exc.value)
    if len(value) > 60:
        value = value[:57] + "..."
    return f"{where or 'message '}{message} (got {value})"
