"""The checks on a request as a whole that both faces share: its parameters, unique names, the outputs asked for
and the form each goes out in.

Each face reads its own envelope (an HTTP JSON object, a gRPC message) and hands the parts here, so an
`InferRequest` is held to the same rules whichever face built it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from inferd.errors import InvalidInput
from inferd.serve.v2.json_values import describe
from inferd.serve.v2.tensors import shared_memory_ref
from inferd.serve.v2.types import InferInput, InferRequest, RequestedOutput, SharedMemory

Named = TypeVar("Named", InferInput, RequestedOutput)


def request_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The request's parameters, once the ones the server reads are checked."""
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise InvalidInput(
            "the request parameter binary_data_output must be true or false, got "
            f"{describe(parameters['binary_data_output'])}"
        )
    return parameters


def unique_inputs(inputs: Iterable[InferInput]) -> list[InferInput]:
    return _unique(inputs, "input '{}' appears more than once; give each input a unique name")


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
    return _unique(outputs, "output '{}' is requested more than once; list each output once") or None


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


def _unique(items: Iterable[Named], duplicate: str) -> list[Named]:
    """Taken one by one, so that a duplicate is reported before the items after it are decoded."""
    checked: list[Named] = []
    names: set[str] = set()
    for item in items:
        if item.name in names:
            raise InvalidInput(duplicate.format(item.name))
        names.add(item.name)
        checked.append(item)
    return checked
