"""One input tensor's checks, and its bytes turned into an array: the one implementation both faces use.

An HTTP input (JSON `data`, the binary part, a shared-memory region) and a gRPC input (`raw_input_contents`,
typed `contents`, a shared-memory region) differ only in where the values come from. The name, datatype, shape,
element limit, the count of values against the shape and the byte layout are checked here, once, so a tensor
that one face refuses the other refuses with the same message. JSON `data` and typed contents, lists of values,
go through `values.py` instead.

Decisions worth knowing:

* A shape over `max_elements` raises `PayloadTooLarge` before anything is allocated.
* Arrays taken from bytes are read-only, zero-copy views of the request's buffer, and may be misaligned (the
  JSON part before them has any length): the batcher copies what it hands to an engine, on its worker thread,
  by merging requests into one batch or, for a lone request, by aligning it.
* Tensors in shared memory (Triton's `shared_memory_region`, `shared_memory_byte_size` and `shared_memory_offset`
  parameters) hold the same bytes as the binary part would, so they are read and checked by the same code; the
  regions themselves are the caller's `SharedMemory`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.errors import InvalidInput, PayloadTooLarge
from inferd.serve.v2.json_values import describe
from inferd.serve.v2.types import DATATYPES, SharedMemory, SharedMemoryRef

DEFAULT_MAX_ELEMENTS = 2**28

# numpy 1.x caps arrays at 32 dimensions; refusing more here gives a clear message instead of a numpy error.
MAX_DIMS = 32
_U32 = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class TensorHead:
    """An input's checked name, datatype and shape; `count` is its number of elements."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    count: int


def tensor_name(kind: str, index: int, raw: Any) -> str:
    """The name of `kind[index]` (`inputs` or `outputs`), which must be a non-empty string."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput(f"{kind}[{index}].name must be a non-empty string, got {describe(raw)}")
    return raw


def tensor_head(name: str, datatype: Any, shape: Any, max_elements: int) -> TensorHead:
    """Check an input's datatype and shape, and its size against `max_elements` before anything is allocated."""
    checked_datatype = _datatype(name, datatype)
    checked = _shape(name, shape)
    head = TensorHead(name, checked_datatype, checked, math.prod(checked))
    if head.count > max_elements:
        raise PayloadTooLarge(
            f"input '{name}': shape {list(checked)} holds {head.count} elements, over the limit of {max_elements}; "
            "split the request into smaller batches"
        )
    return head


def _datatype(name: str, raw: Any) -> str:
    if isinstance(raw, str) and raw in DATATYPES:
        return raw
    hint = f" (did you mean {raw.upper()}?)" if isinstance(raw, str) and raw.upper() in DATATYPES else ""
    raise InvalidInput(
        f"input '{name}': datatype {describe(raw)} is not a V2 datatype{hint}; use one of {', '.join(DATATYPES)}"
    )


def _shape(name: str, raw: Any) -> tuple[int, ...]:
    valid = isinstance(raw, list) and all(type(dim) is int and dim >= 0 for dim in raw)
    if not valid:
        raise InvalidInput(
            f"input '{name}': shape must be an array of non-negative integers like [1, 3, 224, 224], "
            f"got {describe(raw)}"
        )
    if len(raw) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(raw)} dimensions; at most {MAX_DIMS} are supported")
    return tuple(raw)


def shared_memory_ref(what: str, parameters: dict[str, Any], shared_memory: SharedMemory | None
                      ) -> SharedMemoryRef | None:
    """Lift the shared-memory parameters out of `parameters`: region and byte size together, offset optional.

    Without `shared_memory` (an endpoint that takes none), a tensor in shared memory is refused.
    """
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
        raise InvalidInput(f"{what}: parameters.shared_memory_region must be a region name, got {describe(region)}")
    for field_name, value in (("shared_memory_byte_size", byte_size), ("shared_memory_offset", offset)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise InvalidInput(f"{what}: parameters.{field_name} must be a non-negative integer, got {describe(value)}")
    if shared_memory is None:
        raise InvalidInput(f"{what} is in shared memory, which this endpoint does not take; send it in the body")
    return SharedMemoryRef(region, byte_size, offset or 0)


def one_way(name: str, ways: Iterable[tuple[str, object]], choices: str) -> None:
    """Refuse a tensor given more than one way (`ways` pairs each field with its value, None when absent)."""
    given = [what for what, value in ways if value is not None]
    if len(given) > 1:
        raise InvalidInput(f"input '{name}' has {' and '.join(given)}; send the tensor one way only: {choices}")


def from_shared_memory(head: TensorHead, ref: SharedMemoryRef, shared_memory: SharedMemory) -> np.ndarray:
    """A copy, never a view: the region may change or go away once the call returns."""
    return from_binary(head, memoryview(shared_memory.read(ref)), "shared_memory_byte_size")


def from_binary(head: TensorHead, chunk: memoryview, size_field: str = "binary_data_size") -> np.ndarray:
    """The tensor whose little-endian bytes (length-prefixed elements for BYTES) are `chunk`.

    `size_field` names where the chunk's size came from, for the messages.
    """
    name, datatype, shape, count = head.name, head.datatype, head.shape, head.count
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
    return object_array(items)


def from_elements(head: TensorHead, items: Sequence[bytes], source: str) -> np.ndarray:
    """A BYTES tensor whose elements come one by one (gRPC's `bytes_contents`): no length prefixes to walk."""
    if len(items) != head.count:
        raise InvalidInput(
            f"input '{head.name}': {source} has {len(items)} elements but shape {list(head.shape)} needs "
            f"{head.count}; send exactly that many, in row-major order, or fix the shape"
        )
    return object_array(list(items)).reshape(head.shape)


def object_array(items: list[Any]) -> np.ndarray:
    """Fill a 1-D object array element-wise, so numpy never mistakes an element for a nested sequence."""
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array
