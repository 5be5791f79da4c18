"""JSON as the server reads it (every body and parameter), object fields, and short descriptions of wrong values.

`loads` is the one JSON parser for what clients send: every failure, the integer that Python refuses to convert
(more than `sys.get_int_max_str_digits()` digits, a bound on the time a number may cost) included, is an
`InvalidInput`, never a 500. The descriptions are short on purpose, so that a megabyte of bad data cannot turn into
a megabyte of error message; every face and every decoder describes a wrong value the same way.
"""

from __future__ import annotations

import json
import reprlib
import sys
from collections.abc import Callable
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


def loads(raw: bytes | str, what: str, hint: str | Callable[[str], str] = "") -> Any:
    """`raw` parsed as JSON; every failure is a 400 that names what was read, why it failed and `hint` (given the
    reason, when it depends on it).

    The bare `NaN` and `Infinity` tokens are accepted, as tensor data may hold them (Python's `json.dumps`, and so
    tritonclient, writes them); whatever reads a parameter checks that it is finite.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at line {exc.lineno}, column {exc.colno} (character {exc.pos})"
    except UnicodeDecodeError as exc:
        reason = f"it is not valid UTF-8 (at byte {exc.start}); encode it as UTF-8"
    except RecursionError:
        reason = "it nests arrays or objects too deeply to parse"
    except ValueError:  # the only other one json raises: an integer with too many digits to convert
        reason = (f"it holds an integer of more than {sys.get_int_max_str_digits()} digits, which no datatype holds "
                  "(INT64 and UINT64 take at most 20)")
    advice = hint(reason) if callable(hint) else hint
    raise InvalidInput(f"{what} is not valid JSON: {reason}" + (f"; {advice}" if advice else ""))


def parse_object(raw: bytes | str, what: str) -> dict[str, Any]:
    """`raw` as the JSON object `what` must be (a request body, a parameter); every failure is a 400 naming it."""
    return as_object(loads(raw, what), what)


def as_object(raw: Any, what: str) -> dict[str, Any]:
    """A JSON object field (absent is empty); a copy, so that lifting parameters out never touches the parsed JSON."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {describe(raw)}")
    return dict(raw)
