"""Codec for Open Inference Protocol (KServe V2 / Triton) REST inference bodies, binary tensor data included.

It works on bytes and numpy arrays only, so the HTTP layer stays thin and every wire detail is tested here
against tritonclient, the reference client.

Decisions worth knowing:

* Every malformed request raises `InvalidInput` naming the input, what is wrong and how to fix it; a shape
  over `max_elements` raises `PayloadTooLarge` before anything is allocated.
* JSON `null` for an optional field (`id`, `parameters`, `outputs`, `data`, ...) means the field is absent.
* Arrays taken from the binary part are read-only, zero-copy views of the request body, and may be
  misaligned (the JSON part before them has any length): the batcher copies what it hands to an engine,
  on its worker thread, by merging requests into one batch or, for a lone request, by aligning it.
* `binary_data_size` and `binary_data` are transport details: they are lifted out of the decoded `parameters`,
  so a JSON request and its binary twin decode to the same objects.
* Non-finite floats in JSON responses are written as the strings "NaN", "Infinity" and "-Infinity" (the
  protobuf JSON mapping's spelling): the JSON stays valid, nothing is lost, and tritonclient's
  `np.array(data, dtype)` reads them back as floats. Requests may use the same strings, or the bare `NaN` and
  `Infinity` tokens that Python's `json.dumps` (and so tritonclient) writes.
  tritonclient cannot parse the words back for BF16 only (its bfloat16 cast refuses strings); BF16 clients
  normally ask for binary outputs anyway, as tritonclient insists on for BF16 inputs.
* JSON tensor data may be flat (row-major) or nested exactly like the shape; integer datatypes take only JSON
  integers, BOOL only true/false, BYTES only strings (UTF-8 encoded); FP16/BF16 numbers are rounded, and
  numbers beyond a datatype's range are refused rather than clipped or turned into infinity.
* A BYTES output that is not valid UTF-8 cannot be a JSON string, so it goes out as binary even when JSON was
  asked for: tritonclient reads either form, and nothing is mangled.
* Tensors in shared memory (Triton's `shared_memory_region`, `shared_memory_byte_size` and
  `shared_memory_offset` parameters) hold the same bytes as the binary part would, so they are read and checked
  by the same code; the regions themselves are the caller's `SharedMemory`.
"""

from __future__ import annotations

import contextlib
import json
import math
import reprlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from inferd.errors import InvalidInput, PayloadTooLarge

INFERENCE_HEADER = "Inference-Header-Content-Length"
DEFAULT_MAX_ELEMENTS = 2**28

# numpy 1.x caps arrays at 32 dimensions; refusing more here gives a clear message instead of a numpy error.
_MAX_DIMS = 32
_NON_FINITE_WORDS = frozenset({"NaN", "Infinity", "-Infinity"})
_U32 = struct.Struct("<I")
_TYPE_NAMES = {
    bool: "a boolean", int: "an integer", float: "a floating-point number", str: "a string",
    list: "an array", dict: "an object", type(None): "null",
}


def _datatypes() -> dict[str, np.dtype[Any]]:
    """BF16 needs ml_dtypes (shipped with jax, tensorflow and tritonclient), so it is offered only when present."""
    table: dict[str, np.dtype[Any]] = {
        "BOOL": np.dtype(np.bool_),
        "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
        "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
        "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
        "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
        "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
        "BYTES": np.dtype(object),
    }
    with contextlib.suppress(ImportError):
        import ml_dtypes

        table["BF16"] = np.dtype(ml_dtypes.bfloat16)
    return table


DATATYPES: Mapping[str, np.dtype[Any]] = MappingProxyType(_datatypes())
_DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype[Any]) -> str:
    """Map a numpy dtype to its V2 name; numpy string dtypes count as BYTES so models may return them as they are.

    Raises TypeError for dtypes V2 cannot carry (complex, datetime, ...): that is a model bug, not a user error.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    name = _DATATYPE_OF.get(dtype.newbyteorder("="))
    if name is None:
        raise TypeError(f"numpy dtype {dtype} has no V2 datatype; cast it to one of {', '.join(DATATYPES)}")
    return name


@dataclass(eq=False, slots=True)
class InferInput:
    """A decoded input: `data` already has `shape` and the numpy dtype of `datatype` (bytes objects for BYTES).

    Identity equality, because comparing arrays with `==` has no single truth value.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor lies in a registered shared-memory region."""

    region: str
    byte_size: int
    offset: int = 0


class SharedMemory(Protocol):
    """The registered regions; every method raises InvalidInput for a region or span that does not exist."""

    def read(self, ref: SharedMemoryRef) -> bytes: ...

    def check(self, ref: SharedMemoryRef) -> None: ...

    def write(self, ref: SharedMemoryRef, data: bytes | memoryview) -> None: ...


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; `binary_data` is None when the client left the choice to the server."""

    name: str
    binary_data: bool | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    shared_memory: SharedMemoryRef | None = None


@dataclass(eq=False, slots=True)
class InferRequest:
    """A decoded request; `outputs` is None when the client wants every output (absent or empty list)."""

    id: str | None
    inputs: list[InferInput]
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class InferResponse:
    """What the server answers; outputs are encoded in list order, which is also the binary part's order.

    Outputs named in `shared_memory_outputs` are written to their region instead of the body.
    """

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    shared_memory_outputs: dict[str, SharedMemoryRef] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- decoding


def decode_request(
    body: bytes, header_length: int | str | None = None, *, max_elements: int = DEFAULT_MAX_ELEMENTS,
    shared_memory: SharedMemory | None = None,
) -> InferRequest:
    """Decode a V2 inference request body.

    `header_length` is the `Inference-Header-Content-Length` header as received (its string is accepted so the
    HTTP layer need not validate it); None means the whole body is JSON. Without `shared_memory`, tensors in
    shared memory are refused.
    """
    view = memoryview(body)
    json_length = _json_length(header_length, len(view))
    header = _parse_json(bytes(view[:json_length]), header_length is not None)
    return decode_parsed_request(header, view[json_length:], binary_given=header_length is not None,
                                 max_elements=max_elements, shared_memory=shared_memory)


def decode_parsed_request(
    header: Any, binary: memoryview, *, binary_given: bool = True, max_elements: int = DEFAULT_MAX_ELEMENTS,
    shared_memory: SharedMemory | None = None,
) -> InferRequest:
    """Decode a request whose JSON part is already parsed, with `binary` the bytes that followed it.

    The gRPC face builds `header` from protobuf, so its requests pass every check an HTTP request does.
    `binary_given` says whether the client declared a binary part (for the hint when sizes do not add up).
    """
    if not isinstance(header, dict):
        raise InvalidInput(
            f"the request JSON must be an object like {{\"inputs\": [...]}}, got {_describe(header)}"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"the request id must be a string, got {_describe(request_id)}")
    parameters = as_object(header.get("parameters"), "the request's parameters")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput(
            "the request parameter binary_data_output must be true or false, got "
            f"{_describe(parameters['binary_data_output'])}"
        )
    part = _BinaryPart(binary, binary_given)
    inputs = _decode_inputs(header.get("inputs"), part, max_elements, shared_memory)
    part.check_consumed()
    return InferRequest(request_id, inputs, _decode_outputs(header.get("outputs"), shared_memory), parameters)


def _json_length(header_length: int | str | None, body_size: int) -> int:
    if header_length is None:
        return body_size
    if isinstance(header_length, str):
        text = header_length.strip()
        value = int(text) if text.isascii() and text.isdigit() else -1
    else:
        value = header_length if isinstance(header_length, int) and not isinstance(header_length, bool) else -1
    if value < 0:
        raise InvalidInput(
            f"the {INFERENCE_HEADER} header must be a non-negative integer (the length of the JSON part in bytes), "
            f"got {header_length!r}"
        )
    if value > body_size:
        raise InvalidInput(
            f"the {INFERENCE_HEADER} header says the JSON part is {value} bytes but the whole body is {body_size} "
            "bytes; set it to the length of the JSON alone, which the binary tensor data follows"
        )
    return value


def _parse_json(raw: bytes, split: bool) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        if split:
            hint = f"the JSON part is the first {len(raw)} bytes of the body, as the {INFERENCE_HEADER} header says"
        elif exc.msg == "Extra data":
            hint = f"if binary tensor data follows the JSON, send the {INFERENCE_HEADER} header with the JSON's length"
        else:
            hint = "send a JSON object as the Open Inference Protocol describes"
        raise InvalidInput(
            f"the request is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos}); {hint}"
        ) from None
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"the request JSON is not valid UTF-8 (at byte {exc.start}); encode it as UTF-8") from None
    except RecursionError:
        raise InvalidInput("the request JSON nests arrays or objects too deeply to parse") from None


class _BinaryPart:
    """The bytes after the JSON, handed out in input order as the binary data extension prescribes."""

    def __init__(self, view: memoryview, header_given: bool) -> None:
        self._view = view
        self._offset = 0
        self._header_given = header_given

    def take(self, name: str, size: int) -> memoryview:
        end = self._offset + size
        if end > len(self._view):
            missing = "" if self._header_given else f"; binary tensor data needs the {INFERENCE_HEADER} header"
            raise InvalidInput(
                f"input '{name}': the binary_data_size values up to this input add up to {end} bytes but only "
                f"{len(self._view)} bytes follow the JSON{missing}"
            )
        chunk = self._view[self._offset:end]
        self._offset = end
        return chunk

    def check_consumed(self) -> None:
        extra = len(self._view) - self._offset
        if extra:
            raise InvalidInput(
                f"{extra} bytes follow the JSON and the inputs' binary data that no input claims; the inputs' "
                f"binary_data_size values must add up to exactly the bytes after the JSON (check {INFERENCE_HEADER})"
            )


def _decode_inputs(
    raw: Any, binary: _BinaryPart, max_elements: int, shared_memory: SharedMemory | None
) -> list[InferInput]:
    if not isinstance(raw, list) or not raw:
        raise InvalidInput(
            '"inputs" must be a non-empty array of tensors like {"name": "x", "datatype": "FP32", "shape": [2], '
            f'"data": [0.5, 1.5]}}, got {_describe(raw)}'
        )
    inputs: list[InferInput] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        decoded = _decode_input(index, item, binary, max_elements, shared_memory)
        if decoded.name in names:
            raise InvalidInput(f"input '{decoded.name}' appears more than once; give each input a unique name")
        names.add(decoded.name)
        inputs.append(decoded)
    return inputs


def _decode_input(
    index: int, item: Any, binary: _BinaryPart, max_elements: int, shared_memory: SharedMemory | None
) -> InferInput:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, datatype, shape and data")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"inputs[{index}].name must be a non-empty string, got {_describe(name)}")
    datatype = _datatype(name, item.get("datatype"))
    shape = _shape(name, item.get("shape"))
    count = math.prod(shape)
    if count > max_elements:
        raise PayloadTooLarge(
            f"input '{name}': shape {list(shape)} holds {count} elements, over the limit of {max_elements}; "
            "split the request into smaller batches"
        )
    parameters = as_object(item.get("parameters"), f"input '{name}': parameters")
    size = parameters.pop("binary_data_size", None)
    reference = _shared_memory_ref(f"input '{name}'", parameters, shared_memory)
    data = item.get("data")
    given = [what for what, value in (("data", data), ("parameters.binary_data_size", size),
                                      ("parameters.shared_memory_region", reference)) if value is not None]
    if len(given) > 1:
        raise InvalidInput(
            f"input '{name}' has {' and '.join(given)}; send the tensor one way only: JSON data, the binary part "
            "or a shared-memory region"
        )
    if reference is not None and shared_memory is not None:
        chunk = memoryview(shared_memory.read(reference))
        array = _from_binary(name, datatype, shape, count, chunk, "shared_memory_byte_size")
    elif size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"input '{name}': parameters.binary_data_size must be a non-negative integer, got {_describe(size)}"
            )
        array = _from_binary(name, datatype, shape, count, binary.take(name, size))
    elif data is not None:
        array = _from_json(name, datatype, shape, count, data)
    else:
        raise InvalidInput(_no_data_message(name, parameters))
    return InferInput(name, datatype, shape, array, parameters)


def _no_data_message(name: str, parameters: dict[str, Any]) -> str:
    return (
        f"input '{name}' has no data; put its values in \"data\", append its bytes after the JSON and set "
        "parameters.binary_data_size, or name a registered shared-memory region"
    )


def _shared_memory_ref(what: str, parameters: dict[str, Any], shared_memory: SharedMemory | None
                       ) -> SharedMemoryRef | None:
    """Lift the shared-memory parameters out of `parameters`: region and byte size together, offset optional."""
    region = parameters.pop("shared_memory_region", None)
    byte_size = parameters.pop("shared_memory_byte_size", None)
    offset = parameters.pop("shared_memory_offset", None)
    if region is None and byte_size is None and offset is None:
        return None
    if region is None or byte_size is None:
        raise InvalidInput(
            f"{what}: parameters.shared_memory_region and parameters.shared_memory_byte_size go together; "
            "give both (and shared_memory_offset if the tensor does not start the region)"
        )
    if not isinstance(region, str) or not region:
        raise InvalidInput(f"{what}: parameters.shared_memory_region must be a region name, got {_describe(region)}")
    for field_name, value in (("shared_memory_byte_size", byte_size), ("shared_memory_offset", offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidInput(f"{what}: parameters.{field_name} must be a non-negative integer, got {_describe(value)}")
    if shared_memory is None:
        raise InvalidInput(f"{what} is in shared memory, which this endpoint does not take; send it in the body")
    return SharedMemoryRef(region, byte_size, offset or 0)


def _datatype(name: str, raw: Any) -> str:
    if isinstance(raw, str) and raw in DATATYPES:
        return raw
    hint = f" (did you mean {raw.upper()}?)" if isinstance(raw, str) and raw.upper() in DATATYPES else ""
    raise InvalidInput(
        f"input '{name}': datatype {_describe(raw)} is not a V2 datatype{hint}; use one of {', '.join(DATATYPES)}"
    )


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    valid = isinstance(raw, list) and all(type(dim) is int and dim >= 0 for dim in raw)
    if not valid:
        raise InvalidInput(
            f"input '{name}': shape must be an array of non-negative integers like [1, 3, 224, 224], "
            f"got {_describe(raw)}"
        )
    if len(raw) > _MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(raw)} dimensions; at most {_MAX_DIMS} are supported")
    return tuple(raw)


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
        raise InvalidInput(f"{what} must be a JSON object, got {_describe(raw)}")
    return dict(raw)


def _decode_outputs(raw: Any, shared_memory: SharedMemory | None) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f'"outputs" must be an array of objects like {{"name": "y"}}, got {_describe(raw)}')
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        output = _decode_output(index, item, shared_memory)
        if output.name in names:
            raise InvalidInput(f"output '{output.name}' is requested more than once; list each output once")
        names.add(output.name)
        outputs.append(output)
    return outputs or None


def _decode_output(index: int, item: Any, shared_memory: SharedMemory | None) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidInput(f'outputs[{index}] must be an object like {{"name": "y"}}, got {_describe(item)}')
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"outputs[{index}].name must be a non-empty string, got {_describe(name)}")
    parameters = as_object(item.get("parameters"), f"output '{name}': parameters")
    binary_data = parameters.pop("binary_data", None)
    if binary_data is not None and not isinstance(binary_data, bool):
        raise InvalidInput(
            f"output '{name}': parameters.binary_data must be true or false, got {_describe(binary_data)}"
        )
    reference = _shared_memory_ref(f"output '{name}'", parameters, shared_memory)
    if reference is not None and shared_memory is not None:
        shared_memory.check(reference)  # before the model runs, not after (an input's read checks its own)
    return RequestedOutput(name, binary_data, parameters, reference)


# ---------------------------------------------------------------------------------------------------- binary input


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], count: int, chunk: memoryview,
                 size_field: str = "binary_data_size") -> np.ndarray:
    """`size_field` is the parameter that gave the chunk's size, for the messages."""
    if datatype == "BYTES":
        return _bytes_from_binary(name, count, chunk, size_field).reshape(shape)
    dtype = DATATYPES[datatype]
    needed = count * dtype.itemsize
    if len(chunk) != needed:
        raise InvalidInput(
            f"input '{name}': {size_field} is {len(chunk)} bytes but shape {list(shape)} of {datatype} needs "
            f"{needed} ({count} elements of {dtype.itemsize} bytes); fix the shape, datatype or binary data"
        )
    if datatype == "BOOL":
        return _bools_from_binary(name, chunk).reshape(shape)
    # A view, except on big-endian hosts, where the bytes must be swapped.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _bools_from_binary(name: str, chunk: memoryview) -> np.ndarray:
    """numpy would take any byte as a bool and later compare it oddly, so only 0 and 1 pass."""
    raw = np.frombuffer(chunk, dtype=np.uint8)
    if raw.size and raw.max() > 1:
        index = int(np.argmax(raw > 1))
        raise InvalidInput(
            f"input '{name}': BOOL binary data must be bytes 0 or 1, but element {index} is {int(raw[index])}"
        )
    return raw.view(np.bool_)


def _bytes_from_binary(name: str, count: int, chunk: memoryview, size_field: str) -> np.ndarray:
    """Walk the 4-byte little-endian length prefixes; the size check up front keeps a huge shape from allocating.

    The prefixes chain, so this cannot be vectorized; the loop is kept to one unpack, one check and one slice.
    """
    data = chunk.tobytes()
    end = len(data)
    if 4 * count > end:
        raise InvalidInput(
            f"input '{name}': {size_field} is {end} bytes, too small for {count} BYTES elements; each element "
            "is a 4-byte little-endian length followed by that many bytes"
        )
    unpack = _U32.unpack_from
    items: list[bytes] = []
    offset = index = 0
    try:
        for index in range(count):
            (length,) = unpack(data, offset)
            start, offset = offset + 4, offset + 4 + length
            if offset > end:
                raise InvalidInput(
                    f"input '{name}': BYTES element {index} declares {length} bytes but only {end - start} remain "
                    f"within its {size_field} of {end}"
                )
            items.append(data[start:offset])
    except struct.error:
        raise InvalidInput(
            f"input '{name}': BYTES binary data ends inside the length prefix of element {index} of {count}; "
            "each element is a 4-byte little-endian length followed by that many bytes"
        ) from None
    if offset != end:
        raise InvalidInput(
            f"input '{name}': {end - offset} bytes are left over after the {count} BYTES elements its shape holds; "
            f"{size_field} must cover exactly the length-prefixed elements"
        )
    return _object_array(items)


# ---------------------------------------------------------------------------------------------------- JSON input


def _from_json(name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any) -> np.ndarray:
    flat = _flatten(name, data, shape, count)
    kinds = set(map(type, flat))
    if datatype == "BYTES":
        values = _json_strings(name, flat, kinds)
    elif datatype == "BOOL":
        _check_kinds(name, datatype, flat, kinds, {bool}, "true or false")
        values = np.array(flat, dtype=np.bool_)
    elif DATATYPES[datatype].kind in "iu":
        values = _json_ints(name, datatype, flat, kinds)
    else:
        values = _json_floats(name, datatype, flat, kinds)
    return values.reshape(shape)


def _flatten(name: str, data: Any, shape: tuple[int, ...], count: int) -> list[Any]:
    """Accept flat row-major data or data nested exactly like the shape, walking level by level (no recursion)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a JSON array, got {_describe(data)}")
    if not data or not isinstance(data[0], list):
        if len(data) != count:
            raise InvalidInput(
                f"input '{name}': data has {len(data)} values but shape {list(shape)} needs {count}; send exactly "
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
                    f"array of {size}, found {_describe(node)}; nest the data exactly like the shape, or send a "
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
        f"input '{name}': element {index} is {_TYPE_NAMES.get(type(value), 'a value')} {_preview(value)}{nested}, "
        f"but {datatype} data must be {want}"
    )


def _json_ints(name: str, datatype: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
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


def _json_floats(name: str, datatype: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
    want = 'numbers (or the strings "NaN", "Infinity", "-Infinity")'
    _check_kinds(name, datatype, flat, kinds, {int, float, str}, want)
    if str in kinds:
        words = [v for v in flat if type(v) is str and v not in _NON_FINITE_WORDS]
        if words:
            raise InvalidInput(
                f"input '{name}': element {flat.index(words[0])} is the string {_preview(words[0])}, "
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


def _json_strings(name: str, flat: list[Any], kinds: set[type]) -> np.ndarray:
    _check_kinds(name, "BYTES", flat, kinds, {str}, "strings (send bytes that are not UTF-8 as binary data)")
    try:
        return _object_array([text.encode() for text in flat])
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


def _object_array(items: list[Any]) -> np.ndarray:
    """Fill a 1-D object array element-wise, so numpy never mistakes an element for a nested sequence."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# ---------------------------------------------------------------------------------------------------- encoding


def encode_response(
    response: InferResponse, *, binary_outputs: set[str] | bool, shared_memory: SharedMemory | None = None
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON part's length, or None when there is no binary part.

    `binary_outputs` is True or False for all outputs, or the names of those to send as binary
    (see `binary_outputs_for`); `shared_memory` receives the outputs in `response.shared_memory_outputs`.
    """
    header: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version is not None:
        header["model_version"] = response.model_version
    if response.id is not None:
        header["id"] = response.id
    if response.parameters:
        header["parameters"] = response.parameters
    tensors: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for name, output in response.outputs:
        wants_binary = binary_outputs if isinstance(binary_outputs, bool) else name in binary_outputs
        tensor, chunk = _encode_output(name, output, wants_binary, response.shared_memory_outputs.get(name),
                                       shared_memory)
        if chunk is not None:
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        tensors.append(tensor)
    header["outputs"] = tensors
    # allow_nan=False: non-finite tensor values are already words, so a NaN here is a bug to surface, not to send.
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)


def encode_raw_outputs(
    response: InferResponse, *, shared_memory: SharedMemory | None = None
) -> list[tuple[dict[str, Any], bytes | memoryview | None]]:
    """Each output's name, datatype, shape and parameters, with its raw little-endian bytes (length-prefixed
    elements for BYTES), or None when it went to shared memory: what gRPC's `raw_output_contents` carry."""
    return [_encode_output(name, output, True, response.shared_memory_outputs.get(name), shared_memory)
            for name, output in response.outputs]


def _encode_output(
    name: str, output: np.ndarray, binary: bool, reference: SharedMemoryRef | None, shared_memory: SharedMemory | None
) -> tuple[dict[str, Any], bytes | memoryview | None]:
    """One output tensor's description and, when it goes out as bytes, those bytes."""
    array = np.asarray(output)
    datatype = datatype_of(array.dtype)
    tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if reference is not None:
        tensor["parameters"] = _to_shared_memory(name, datatype, array, reference, shared_memory)
        return tensor, None
    values = None if binary else _json_values(datatype, array)
    if values is None:
        return tensor, _binary_values(datatype, array)
    tensor["data"] = values
    return tensor, None


def _to_shared_memory(name: str, datatype: str, array: np.ndarray, reference: SharedMemoryRef,
                      shared_memory: SharedMemory | None) -> dict[str, Any]:
    """Write an output to its region; the response keeps its name, datatype and shape, and says where it went."""
    if shared_memory is None:
        raise InvalidInput(f"output '{name}' is asked for in shared memory, which this endpoint does not write")
    chunk = _binary_values(datatype, array)
    if len(chunk) > reference.byte_size:
        raise InvalidInput(
            f"output '{name}' is {len(chunk)} bytes ({datatype}, shape {list(array.shape)}) but its "
            f"shared_memory_byte_size is {reference.byte_size}; give it a region of at least {len(chunk)} bytes"
        )
    shared_memory.write(reference, chunk)
    parameters: dict[str, Any] = {"shared_memory_region": reference.region, "shared_memory_byte_size": len(chunk)}
    if reference.offset:
        parameters["shared_memory_offset"] = reference.offset
    return parameters


def _json_values(datatype: str, array: np.ndarray) -> list[Any] | None:
    """Flat values for JSON, or None when they cannot be JSON (BYTES that are not UTF-8)."""
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return _output_strings(flat)
    values: list[Any] = flat.tolist()
    if datatype in ("FP16", "FP32", "FP64", "BF16"):
        for index in np.flatnonzero(~np.isfinite(flat)).tolist():
            values[index] = _non_finite_word(values[index])
    return values


def _non_finite_word(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _output_strings(flat: np.ndarray) -> list[str] | None:
    items = _output_items(flat)
    try:
        return [item.decode() if isinstance(item, bytes) else item for item in items]
    except UnicodeDecodeError:
        return None


def _output_items(flat: np.ndarray) -> list[bytes | str]:
    """A model handing back other objects as BYTES is a bug in the model, hence TypeError, not InvalidInput."""
    items: list[bytes | str] = flat.tolist()
    kinds = set(map(type, items))
    if not all(issubclass(kind, (bytes, str)) for kind in kinds):
        bad = next(item for item in items if not isinstance(item, (bytes, str)))
        raise TypeError(f"BYTES output elements must be bytes or str, got {type(bad).__name__}")
    return items


def _binary_values(datatype: str, array: np.ndarray) -> bytes | memoryview:
    """A uint8 view rather than `tobytes()`, so large outputs are copied once, by the final join."""
    if datatype == "BYTES":
        return _serialize_bytes(array)
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return little.reshape(-1).view(np.uint8).data


def _serialize_bytes(array: np.ndarray) -> bytes:
    """Interleave length prefixes and payloads with numpy: about three times faster than joining pairs in a loop."""
    items = _output_bytes(_output_items(array.reshape(-1)))
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    sizes = lengths + 4
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    prefix_at = (starts[:, None] + np.arange(4)).ravel()
    out[prefix_at] = lengths.astype("<u4").view(np.uint8)
    is_payload = np.ones(out.size, dtype=np.bool_)
    is_payload[prefix_at] = False
    out[is_payload] = np.frombuffer(b"".join(items), dtype=np.uint8)
    return out.tobytes()


def _output_bytes(items: list[bytes | str]) -> list[bytes]:
    return [item.encode() if isinstance(item, str) else item for item in items]


def binary_outputs_for(request: InferRequest, default_binary: bool) -> set[str] | bool:
    """Which outputs go out as binary: an output's own `binary_data` wins, then the request's `binary_data_output`,
    then the server's default. A bool when the client asked for all outputs, since their names are unknown here.
    """
    fallback = bool(request.parameters.get("binary_data_output", default_binary))
    if request.outputs is None:
        return fallback
    return {
        output.name for output in request.outputs
        if (fallback if output.binary_data is None else output.binary_data)
    }


# ---------------------------------------------------------------------------------------------------- messages

_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlist = 4
_REPR.maxdict = 4
_REPR.maxlevel = 2


def _preview(value: Any) -> str:
    """Short, so that a megabyte of bad data cannot turn into a megabyte of error message."""
    return json.dumps(value) if isinstance(value, bool) else _REPR.repr(value)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"an array of {len(value)}"
    if value is None:
        return "null"
    return f"{_TYPE_NAMES.get(type(value), 'a value')} {_preview(value)}"
