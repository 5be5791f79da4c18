"""A tensor given as a list of values, JSON `data` over HTTP or typed `contents` over gRPC, as an array.

Decisions worth knowing:

* Data may be flat (row-major) or nested exactly like the shape; integer datatypes take only integers, BOOL only
  true/false, BYTES only strings (UTF-8 encoded); FP16/BF16 numbers are rounded, and numbers beyond a datatype's
  range are refused rather than clipped or turned into infinity (gRPC's `int_contents` carry INT8 and INT16 in
  32 bits, so the range check matters there too).
* Non-finite floats may be the strings "NaN", "Infinity" and "-Infinity" (the protobuf JSON mapping's
  spelling, which the JSON responses use), or the bare `NaN` and `Infinity` tokens that Python's `json.dumps`
  (and so tritonclient) writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.serve.v2.json_values import TYPE_NAMES, describe, preview
from inferd.serve.v2.tensors import TensorHead, object_array
from inferd.serve.v2.types import DATATYPES

_NON_FINITE_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})


def from_values(head: TensorHead, data: Any, source: str = "data") -> np.ndarray:
    """`source` names the field the values came in, for the messages."""
    name, datatype = head.name, head.datatype
    flat = _flatten(name, data, head.shape, head.count, source)
    kinds = set(map(type, flat))
    if datatype == "BYTES":
        values = _strings(name, flat, kinds)
    elif datatype == "BOOL":
        _check_kinds(name, datatype, flat, kinds, {bool}, "true or false")
        values = np.array(flat, dtype=np.bool_)
    elif DATATYPES[datatype].kind in "iu":
        values = _ints(name, datatype, flat, kinds)
    else:
        values = _floats(name, datatype, flat, kinds)
    return values.reshape(head.shape)


def _flatten(name: str, data: Any, shape: tuple[int, ...], count: int, source: str) -> list[Any]:
    """Accept flat row-major data or data nested exactly like the shape, walking level by level (no recursion)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': {source} must be a JSON array, got {describe(data)}")
    if not data or not isinstance(data[0], list):
        if len(data) != count:
            raise InvalidInput(
                f"input '{name}': {source} has {len(data)} values but shape {list(shape)} needs {count}; send exactly "
                "that many values in row-major order, or fix the shape"
            )
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        children: list[Any] = []
        for node in level:
            if type(node) is not list or len(node) != size:
                raise InvalidInput(
                    f"input '{name}': nested data does not match shape {list(shape)}: at depth {depth} expected an "
                    f"array of {size}, found {describe(node)}; nest the data exactly like the shape, or send a "
                    f"flat array of {count} values"
                )
            children.extend(node)
        level = children
    return level


def _check_kinds(name: str, datatype: str, flat: list[Any], kinds: set[type], allowed: set[type], want: str) -> None:
    if kinds <= allowed:
        return
    index, value = next((i, v) for i, v in enumerate(flat) if type(v) not in allowed)
    nested = " (the data nests deeper than the shape)" if isinstance(value, list) else ""
    raise InvalidInput(
        f"input '{name}': element {index} is {TYPE_NAMES.get(type(value), 'a value')} {preview(value)}{nested}, "
        f"but {datatype} data must be {want}"
    )


def _ints(name: str, datatype: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
    _check_kinds(name, datatype, flat, kinds, {int}, "integers (write 3, not 3.0 or \"3\")")
    dtype = DATATYPES[datatype]
    if flat:
        info = np.iinfo(dtype)
        low, high = min(flat), max(flat)
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            raise InvalidInput(
                f"input '{name}': value {bad} is out of range for {datatype} ({info.min} to {info.max}); "
                "use a wider datatype or bring the values into range"
            )
    return np.array(flat, dtype=dtype)


def _floats(name: str, datatype: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
    want = 'numbers (or the strings "NaN", "Infinity", "-Infinity")'
    _check_kinds(name, datatype, flat, kinds, {int, float, str}, want)
    if str in kinds:
        words = [v for v in flat if type(v) is str and v not in _NON_FINITE_WORDS]
        if words:
            raise InvalidInput(
                f"input '{name}': element {flat.index(words[0])} is the string {preview(words[0])}, "
                f"but {datatype} data must be {want}"
            )
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError:
        raise InvalidInput(f"input '{name}': an integer in data is too large for {datatype}") from None
    dtype = DATATYPES[datatype]
    with np.errstate(over="ignore"):
        values = wide.astype(dtype, copy=False)
    overflow = np.isinf(values) & np.isfinite(wide)
    if overflow.any():
        index = int(np.argmax(overflow))
        raise InvalidInput(
            f"input '{name}': element {index} ({float(wide[index])!r}) is out of range for {datatype}; "
            "use a wider datatype such as FP32 or FP64"
        )
    return values


def _strings(name: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
    _check_kinds(name, "BYTES", flat, kinds, {str}, "strings (send bytes that are not UTF-8 as binary data)")
    try:
        return object_array([text.encode() for text in flat])
    except UnicodeEncodeError:
        index = next(i for i, text in enumerate(flat) if not _encodable(text))
        raise InvalidInput(
            f"input '{name}': element {index} holds a lone UTF-16 surrogate escape, which is not valid UTF-8; "
            "send such bytes as binary data"
        ) from None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
