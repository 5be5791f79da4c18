"""An HTTP V2 inference body (JSON, optionally followed by binary tensor data) decoded into an `InferRequest`.

Only the HTTP envelope is read here: the JSON part, the `Inference-Header-Content-Length` split and the binary
part handed out in input order. Each tensor's checks are `tensors.py`'s and `values.py`'s, the request's are
`request.py`'s, shared with the gRPC face. Every wire detail is tested against tritonclient, the reference client.

Decisions worth knowing:

* Every malformed request raises `InvalidInput` naming the input, what is wrong and how to fix it.
* JSON `null` for an optional field (`id`, `parameters`, `outputs`, `data`, ...) means the field is absent.
* `binary_data_size` and `binary_data` are transport details: they are lifted out of the decoded `parameters`,
  so a JSON request and its binary twin decode to the same objects.
"""

from __future__ import annotations

from typing import Any

from inferd.errors import InvalidInput
from inferd.serve.v2.json_values import as_object, describe, loads
from inferd.serve.v2.request import request_parameters, requested_output, unique_inputs, unique_outputs
from inferd.serve.v2.tensors import (
    DEFAULT_MAX_ELEMENTS,
    from_binary,
    from_shared_memory,
    one_way,
    shared_memory_ref,
    tensor_head,
    tensor_name,
)
from inferd.serve.v2.types import InferInput, InferRequest, RequestedOutput, SharedMemory
from inferd.serve.v2.values import from_values

INFERENCE_HEADER = "Inference-Header-Content-Length"
_WAYS = "JSON data, the binary part or a shared-memory region"


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
    binary_given = header_length is not None
    json_length = _json_length(header_length, len(view))
    header = _parse_json(bytes(view[:json_length]), binary_given)
    if not isinstance(header, dict):
        raise InvalidInput(
            f"the request JSON must be an object like {{\"inputs\": [...]}}, got {describe(header)}"
        )
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f"the request id must be a string, got {describe(request_id)}")
    parameters = request_parameters(as_object(header.get("parameters"), "the request's parameters"))
    part = _BinaryPart(view[json_length:], binary_given)
    inputs = _decode_inputs(header.get("inputs"), part, max_elements, shared_memory)
    part.check_consumed()
    return InferRequest(request_id, inputs, _decode_outputs(header.get("outputs"), shared_memory), parameters)


def _json_length(header_length: int | str | None, body_size: int) -> int:
    if header_length is None:
        return body_size
    if isinstance(header_length, str):
        text = header_length.strip()
        digits = text.isascii() and text.isdigit()
        if digits and len(text) > len(str(body_size)):  # longer than the body whatever its value: never converted
            raise InvalidInput(f"the {INFERENCE_HEADER} header is a {len(text)}-digit number but the whole body is "
                               f"{body_size} bytes; set it to the length of the JSON alone, which the binary tensor "
                               "data follows")
        value = int(text) if digits else -1
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
    def hint(reason: str) -> str:
        if split:
            return f"the JSON part is the first {len(raw)} bytes of the body, as the {INFERENCE_HEADER} header says"
        if reason.startswith("Extra data"):
            return f"if binary tensor data follows the JSON, send the {INFERENCE_HEADER} header with the JSON's length"
        return "send a JSON object as the Open Inference Protocol describes"

    return loads(raw, "the request", hint)


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
            f'"data": [0.5, 1.5]}}, got {describe(raw)}'
        )
    return unique_inputs(_decode_input(index, item, binary, max_elements, shared_memory)
                         for index, item in enumerate(raw))


def _decode_input(
    index: int, item: Any, binary: _BinaryPart, max_elements: int, shared_memory: SharedMemory | None
) -> InferInput:
    if not isinstance(item, dict):
        raise InvalidInput(f"inputs[{index}] must be an object with name, datatype, shape and data")
    name = tensor_name("inputs", index, item.get("name"))
    head = tensor_head(name, item.get("datatype"), item.get("shape"), max_elements)
    parameters = as_object(item.get("parameters"), f"input '{name}': parameters")
    size = parameters.pop("binary_data_size", None)
    reference = shared_memory_ref(f"input '{name}'", parameters, shared_memory)
    data = item.get("data")
    one_way(name, (("data", data), ("parameters.binary_data_size", size),
                   ("parameters.shared_memory_region", reference)), _WAYS)
    if reference is not None and shared_memory is not None:
        array = from_shared_memory(head, reference, shared_memory)
    elif size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"input '{name}': parameters.binary_data_size must be a non-negative integer, got {describe(size)}"
            )
        array = from_binary(head, binary.take(name, size))
    elif data is not None:
        array = from_values(head, data)
    else:
        raise InvalidInput(
            f"input '{name}' has no data; put its values in \"data\", append its bytes after the JSON and set "
            "parameters.binary_data_size, or name a registered shared-memory region"
        )
    return InferInput(name, head.datatype, head.shape, array, parameters)


def _decode_outputs(raw: Any, shared_memory: SharedMemory | None) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidInput(f'"outputs" must be an array of objects like {{"name": "y"}}, got {describe(raw)}')
    return unique_outputs(_decode_output(index, item, shared_memory) for index, item in enumerate(raw))


def _decode_output(index: int, item: Any, shared_memory: SharedMemory | None) -> RequestedOutput:
    if not isinstance(item, dict):
        raise InvalidInput(f'outputs[{index}] must be an object like {{"name": "y"}}, got {describe(item)}')
    name = tensor_name("outputs", index, item.get("name"))
    return requested_output(name, as_object(item.get("parameters"), f"output '{name}': parameters"), shared_memory)
