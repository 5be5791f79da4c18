"""One V2 inference, whichever face it came in by: a decoded request in, a response to encode out.

Both halves of the request's contract are settled here, once: its inputs are checked against the model and go to
the batcher as checked (`Checked`), and what becomes of the outputs (which ones, binary or JSON, shared memory)
is decided and carried in the response, which the faces only follow. Encoded images as BYTES for image models
and UTF-8 strings as BYTES for text models end in the same `ModelEntry.infer` as tensors do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
import numpy as np

from inferd.errors import InvalidInput
from inferd.io import top_k
from inferd.runtime.feeds import conform, same_batch
from inferd.serve.batching.inputs import Checked, text_rows
from inferd.serve.images import decode_batch
from inferd.serve.phases import Phases
from inferd.serve.repository import ModelEntry
from inferd.serve.settings import MAX_TIMEOUT_S
from inferd.serve.v2.json_values import describe
from inferd.serve.v2.metadata import v2_datatype
from inferd.serve.v2.request import binary_outputs_for
from inferd.serve.v2.types import InferInput, InferRequest, InferResponse
from inferd.types import ImageType, TextType


async def run_inference(
    entry: ModelEntry, decoded: InferRequest, *, phases: Phases, max_image_pixels: int, timeout_s: float | None = None,
    disconnected: Callable[[], Awaitable[object]] | None = None,
) -> InferResponse:
    """`timeout_s` is the transport's own deadline (gRPC's); the request's `timeout` parameter wins over it.
    Checking and conforming the inputs (decoding images) is input time in `phases`, ranking classes output time."""
    requested = _timeout_s(decoded)
    with phases.input():
        feeds = await _checked(entry, decoded, max_image_pixels)
    outputs = await entry.infer(feeds, phases=phases, timeout_s=requested if requested is not None else timeout_s,
                                disconnected=disconnected)
    with phases.output():
        return _response(entry, decoded, outputs)


def _response(entry: ModelEntry, decoded: InferRequest, outputs: dict[str, np.ndarray]) -> InferResponse:
    """Every instruction for the outputs is decided here, once, and travels in the response for the face to follow:
    which outputs in which order, ranked where the classification extension asks; which go out as binary over
    HTTP (gRPC sends every output as raw bytes); and which are written to shared memory instead of the body."""
    return InferResponse(
        model_name=entry.name, model_version=entry.version, id=decoded.id,
        outputs=_requested_outputs(entry, decoded, outputs),
        shared_memory_outputs={o.name: o.shared_memory for o in decoded.outputs or () if o.shared_memory is not None},
        binary_outputs=binary_outputs_for(decoded, default_binary=False),
    )


def _timeout_s(decoded: InferRequest) -> float | None:
    """The `timeout` request parameter, in microseconds as tritonclient sends it; finite (JSON's NaN fails the
    comparison) and at most a day, so that the deadline is a number."""
    timeout = decoded.parameters.get("timeout")
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S * 1e6:
        raise InvalidInput("the timeout parameter must be a positive number of microseconds up to "
                           f"{MAX_TIMEOUT_S * 1e6:.0f} (a day), got {describe(timeout)}")
    return float(timeout) / 1e6


async def _checked(entry: ModelEntry, decoded: InferRequest, max_pixels: int) -> Checked:
    """The request's one check against the model, in V2's terms: input names, then datatypes (or BYTES holding
    encoded images or UTF-8 texts), then each array's shape, checked and conformed as the Python API does
    (`inferd.runtime.feeds`). The batcher queues the result as it is."""
    specs = {spec.name: spec for spec in entry.model.manifest.inputs}
    names = [i.name for i in decoded.inputs]
    if sorted(names) != sorted(specs):
        raise InvalidInput(f"model {entry.name!r} takes inputs {sorted(specs)}; the request has {sorted(names)}")
    values = {}
    for item in decoded.inputs:
        spec = specs[item.name]
        if isinstance(spec, TextType):
            values[item.name] = _texts(item)
            continue
        if item.datatype == "BYTES" and isinstance(spec, ImageType):
            images = [bytes(x) for x in item.data.reshape(-1)]
            if not images:
                raise InvalidInput(f"input {item.name!r} holds no images")
            values[item.name] = await anyio.to_thread.run_sync(decode_batch, entry, images, max_pixels)
            continue
        expected = v2_datatype(spec.dtype)
        if item.datatype != expected:
            hint = " or BYTES holding encoded images" if isinstance(spec, ImageType) else ""
            raise InvalidInput(f"input {item.name!r} must be {expected}{hint}; got {item.datatype}")
        values[item.name] = item.data
    return Checked(same_batch({
        name: text_rows(values[name].tolist()) if isinstance(spec, TextType) else conform(values[name], spec)
        for name, spec in specs.items()
    }))


def _texts(item: InferInput) -> np.ndarray:
    """A text input's strings, one per batch row: shape [N], or [N, 1] as Triton clients send per-row strings."""
    if item.datatype != "BYTES":
        raise InvalidInput(f"input {item.name!r} is text: send it as BYTES holding UTF-8 strings, not {item.datatype}")
    if len(item.shape) not in (1, 2) or (len(item.shape) == 2 and item.shape[1] != 1):
        raise InvalidInput(f"input {item.name!r} takes one string per batch row: shape [N] or [N, 1], "
                           f"got {list(item.shape)}")
    if item.data.size == 0:
        raise InvalidInput(f"input {item.name!r} holds no texts; send at least one")
    return item.data.reshape(-1)


def _requested_outputs(
    entry: ModelEntry, decoded: InferRequest, outputs: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    if decoded.outputs is None:
        return list(outputs.items())
    selected = []
    for requested in decoded.outputs:
        if requested.name not in outputs:
            raise InvalidInput(f"model {entry.name!r} has no output {requested.name!r}; it has {list(outputs)}")
        value = outputs[requested.name]
        count = requested.parameters.get("classification")
        if count is not None:
            value = _classification(entry, requested.name, value, count)
        selected.append((requested.name, value))
    return selected


def _classification(entry: ModelEntry, output: str, scores: np.ndarray, count: Any) -> np.ndarray:
    """Triton's classification extension: 'score:index:label' strings for the top `count` classes."""
    classifier = entry.model.manifest.classifier
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(f"the classification parameter must be a positive integer, got {count!r}")
    labels = classifier.labels if classifier and classifier.output == output else []
    activation = classifier.activation if classifier and classifier.output == output else "none"
    ranked = top_k(scores.reshape(scores.shape[0], -1), labels, count, activation=activation)
    return np.array([[f"{p.probability:f}:{p.index}:{p.label}".encode() for p in row] for row in ranked], dtype=object)
