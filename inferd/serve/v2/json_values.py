"""JSON values as V2 bodies and parameters carry them: object fields, and short descriptions of wrong values.

The descriptions are short on purpose, so that a megabyte of bad data cannot turn into a megabyte of error
message; every face and every decoder describes a wrong value the same way.
"""

from __future__ import annotations

import json
import reprlib
from typing import Any

from inferd.errors import InvalidInput

TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a floating-point number", str: "a string",
    list: "an array", dict: "an object", type(None): "null",
}

_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlist = 4
_REPR.maxdict = 4
_REPR.maxlevel = 2


def preview(value: Any) -> str:
    return json.dumps(value) if isinstance(value, bool) else _REPR.repr(value)


def describe(value: Any) -> str:
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if value is None:
        return "null"
    return f"{TYPE_NAMES.get(type(value), 'a value')} {preview(value)}"


def parse_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """`raw` as the JSON object `what` must be (a request body, a parameter); every failure is a 400 naming it."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "it nests arrays or objects too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise InvalidInput(f"{what} is not valid JSON: {reason}") from None
    return as_object(value, what)


def as_object(raw: Any, what: str) -> dict[str, Any]:
    """A JSON object field (absent is empty); a copy, so that lifting parameters out never touches the parsed JSON."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {describe(raw)}")
    return dict(raw)
