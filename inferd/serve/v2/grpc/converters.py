"""Protobuf messages to the shared request type and back, as KServe's `InferRequest.from_grpc` and MLServer's
converters do.

A ModelInferRequest becomes an `InferRequest` directly, each tensor through the same checks as an HTTP tensor
(`tensors.py`, `values.py`) and the request through the same request checks (`request.py`): no JSON-shaped
detour, and BYTES from `bytes_contents` are taken element by element, never length-prefixed to be parsed again.

Decisions worth knowing:

* `raw_input_contents` go to the inputs in order, skipping those in shared memory, as Triton assigns them; a
  request that uses them may not also give an input typed `contents`.
* Outputs always go out as `raw_output_contents`, as Triton sends them; an output written to shared memory
  keeps its place in that list with empty bytes, since tritonclient finds each output's bytes by position.
* A message that does not parse becomes a `Corrupt` rather than an exception, so that the servicer can answer
  INVALID_ARGUMENT with the parser's reason instead of grpcio's UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError, Message
from tritonclient.grpc import service_pb2 as pb

from inferd.errors import InvalidInput
from inferd.serve.v2.encode import binary_bytes, write_shared_memory
from inferd.serve.v2.request import request_parameters, requested_output, unique_inputs, unique_outputs
from inferd.serve.v2.tensors import (
    DEFAULT_MAX_ELEMENTS,
    from_binary,
    from_elements,
    from_shared_memory,
    one_way,
    shared_memory_ref,
    tensor_head,
    tensor_name,
)
from inferd.serve.v2.types import InferInput, InferRequest, InferResponse, SharedMemory, datatype_of
from inferd.serve.v2.values import from_values

# Typed `contents` fields per datatype; FP16 and BF16 have none and travel as raw bytes only.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_WAYS = "raw_input_contents, typed contents or a shared-memory region"


@dataclass(frozen=True)
class Corrupt:
    """What the deserializer hands over for bytes that are not the method's request message."""

    message_type: str
    reason: str

    def refuse(self) -> None:
        raise InvalidInput(f"the request is not a valid {self.message_type} message ({self.reason}); send the "
                           "protobuf message the Open Inference Protocol's gRPC service defines")


def parse(message_class: type[Message], data: bytes) -> Message | Corrupt:
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        return Corrupt(message_class.DESCRIPTOR.full_name, str(exc))


def parameters_of(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A protobuf `map<string, InferParameter>` as plain values; a parameter with no value set is left out."""
    values = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(value, kind)
    return values


def set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def request_from_grpc(message: pb.ModelInferRequest, shared_memory: SharedMemory, *,
                      max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    parameters = request_parameters(parameters_of(message.parameters))
    if not message.inputs:
        raise InvalidInput("the request has no inputs; send one tensor in `inputs` for each input of the model")
    raw = _RawContents(message.raw_input_contents)
    inputs = unique_inputs(_inputs(message, raw, shared_memory, max_elements))
    raw.check_consumed()
    outputs = unique_outputs(
        requested_output(tensor_name("outputs", index, output.name), parameters_of(output.parameters), shared_memory)
        for index, output in enumerate(message.outputs))
    return InferRequest(message.id or None, inputs, outputs, parameters)


class _RawContents:
    """`raw_input_contents`, handed out in input order to the inputs not in shared memory."""

    def __init__(self, entries: Any) -> None:
        self._entries = entries
        self._next = 0

    def left(self) -> bool:
        return self._next < len(self._entries)

    def take(self) -> bytes:
        self._next += 1
        chunk: bytes = self._entries[self._next - 1]
        return chunk

    def check_consumed(self) -> None:
        extra = len(self._entries) - self._next
        if extra:
            raise InvalidInput(f"raw_input_contents has {extra} more entries than the inputs that take data; "
                               "send one entry per input, in the inputs' order")


def _inputs(message: pb.ModelInferRequest, raw: _RawContents, shared_memory: SharedMemory, max_elements: int
            ) -> Iterator[InferInput]:
    for index, tensor in enumerate(message.inputs):
        name = tensor_name("inputs", index, tensor.name)
        head = tensor_head(name, tensor.datatype, list(tensor.shape), max_elements)
        parameters = parameters_of(tensor.parameters)
        reference = shared_memory_ref(f"input '{name}'", parameters, shared_memory)
        field = _CONTENTS.get(head.datatype)
        if tensor.HasField("contents") and field is None:
            raise InvalidInput(f"input {name!r}: {head.datatype} has no typed contents field; send its "
                               "bytes in raw_input_contents")
        typed = getattr(tensor.contents, field) if field and tensor.HasField("contents") else None
        if reference is not None:
            one_way(name, (("contents", typed or None), ("parameters.shared_memory_region", reference)), _WAYS)
            array = from_shared_memory(head, reference, shared_memory)
        elif raw.left():
            if typed:
                raise InvalidInput(f"input {name!r} has contents while the request uses raw_input_contents; "
                                   "send every input's data one way")
            array = from_binary(head, memoryview(raw.take()), "its raw_input_contents entry")
        elif typed is not None and head.datatype == "BYTES":
            array = from_elements(head, typed, f"contents.{field}")
        elif typed is not None:
            array = from_values(head, list(typed), f"contents.{field}")
        else:
            raise InvalidInput(f"input '{name}' has no data; send its bytes in raw_input_contents, its values in "
                               "contents, or name a registered shared-memory region in its parameters")
        yield InferInput(name, head.datatype, head.shape, array, parameters)


def response_to_grpc(response: InferResponse, shared_memory: SharedMemory) -> pb.ModelInferResponse:
    """Each output's bytes are taken from its array once, straight into the bytes protobuf takes."""
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version or "",
                                    id=response.id or "")
    set_parameters(message.parameters, response.parameters)
    contents: list[bytes] = []
    for name, output in response.outputs:
        array = np.asarray(output)
        datatype = datatype_of(array.dtype)
        tensor = message.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        reference = response.shared_memory_outputs.get(name)
        if reference is None:
            contents.append(binary_bytes(datatype, array))
        else:
            set_parameters(tensor.parameters, write_shared_memory(name, datatype, array, reference, shared_memory))
            contents.append(b"")
    message.raw_output_contents.extend(contents)
    return message


def stream_error(request: pb.ModelInferRequest | Corrupt, message: str) -> pb.ModelStreamInferResponse:
    """The failed request's id and model go back with the message, so a client can tell which one failed."""
    if isinstance(request, Corrupt):
        return pb.ModelStreamInferResponse(error_message=message)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id))
