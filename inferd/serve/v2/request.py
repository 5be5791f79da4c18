"""The checks on a request as a whole that both faces share: its parameters, unique names, the outputs asked for
and the form each goes out in.

Each face reads its own envelope (an HTTP JSON object, a gRPC message) and hands the parts here, so an
`InferRequest` is held to the same rules whichever face built it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inferd.errors import InvalidInput
from inferd.serve.v2.json_values import describe
from inferd.serve.v2.tensors import shared_memory_ref
from inferd.serve.v2.types import InferInput, InferRequest, RequestedOutput, SharedMemory


def request_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, once the ones the server reads are checked."""
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput(
            "the request parameter binary_data_output must be true or false, got "
            f"{describe(parameters['binary_data_output'])}"
        )
    return parameters


def unique_inputs(inputs: Iterable[InferInput]) -> list[InferInput]:
    """Taken one by one, so that a duplicate is reported before the inputs after it are decoded."""
    checked: list[InferInput] = []
    names: set[str] = set()
    for decoded in inputs:
        if decoded.name in names:
            raise InvalidInput(f"input '{decoded.name}' appears more than once; give each input a unique name")
        names.add(decoded.name)
        checked.append(decoded)
    return checked


def requested_output(name: str, parameters: dict[str, Any], shared_memory: SharedMemory | None) -> RequestedOutput:
    """`binary_data` and the shared-memory parameters are lifted out of `parameters`; a region is checked now,
    before the model runs, not after (an input's read checks its own)."""
    binary_data = parameters.pop("binary_data", None)
    if binary_data is not None and not isinstance(binary_data, bool):
        raise InvalidInput(
            f"output '{name}': parameters.binary_data must be true or false, got {describe(binary_data)}"
        )
    reference = shared_memory_ref(f"output '{name}'", parameters, shared_memory)
    if reference is not None and shared_memory is not None:
        shared_memory.check(reference)
    return RequestedOutput(name, binary_data, parameters, reference)


def unique_outputs(outputs: Iterable[RequestedOutput]) -> list[RequestedOutput] | None:
    """None for no outputs named: the client wants them all."""
    checked: list[RequestedOutput] = []
    names: set[str] = set()
    for output in outputs:
        if output.name in names:
            raise InvalidInput(f"output '{output.name}' is requested more than once; list each output once")
        names.add(output.name)
        checked.append(output)
    return checked or None


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
