"""The Open Inference Protocol's datatypes and the request and response types both faces share.

Whichever face a request came in by (HTTP JSON with binary parts, gRPC, shared memory), it is an `InferRequest`
of numpy arrays by the time the data plane sees it, and the data plane answers an `InferResponse` that each face
encodes its own way: so the protocol's rules live once, not once per face.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np


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
    """What the server answers, with every instruction for its outputs, decided by the data plane: the faces follow
    them. Outputs are encoded in list order, which is also the binary part's order.

    Outputs named in `shared_memory_outputs` are written to their region instead of the body. Over HTTP, the
    others go out as binary per `binary_outputs` (True or False for all, or the names of those that do), as JSON
    otherwise; gRPC sends every output as raw bytes.
    """

    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    shared_memory_outputs: dict[str, SharedMemoryRef] = field(default_factory=dict)
    binary_outputs: set[str] | bool = False
