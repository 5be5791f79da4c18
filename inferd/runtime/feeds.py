"""A model's input contract: the arrays a request gives, held to the graph's names, ranks, sizes and dtypes.

`check_feeds` is the whole check, as the Python API runs it on every call. A server face that speaks a protocol
of its own (V2 names datatypes its way) checks names and datatypes in its own terms and then takes `conform` and
`same_batch` from here, so a request is checked once and its arrays reach the engine as they come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.manifest import Manifest
from inferd.types import ImageType, TensorType, TextType


def check_feeds(model: str, manifest: Manifest, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays in the model's dtype and rank, or an InvalidInput that says which input is wrong and how.

    `model` is the name the caller knows the model by, for the messages.
    """
    specs = {spec.name: spec for spec in manifest.graph_inputs}
    missing = [name for name in specs if name not in inputs]
    unknown = [name for name in inputs if name not in specs]
    if missing or unknown:
        texts = [spec.name for spec in manifest.inputs if isinstance(spec, TextType) and spec.name in unknown]
        hint = (f"; {texts[0]!r} is text: tokenize it with inferd.io.tokenize(model, texts), "
                "or get embeddings with inferd.io.embed(model, texts)") if texts else ""
        raise InvalidInput(f"model {model!r} takes inputs {list(specs)}; missing {missing}, unknown {unknown}{hint}")
    return same_batch({name: conform(np.asarray(inputs[name]), spec) for name, spec in specs.items()})


def conform(value: np.ndarray, spec: ImageType | TensorType) -> np.ndarray:
    """One input in its spec's rank (a lone example gets its batch axis), sizes and dtype, contiguous."""
    expected = spec.shape
    if value.ndim == len(expected) - 1:
        value = value[np.newaxis]  # a single example without its batch axis
    if value.ndim != len(expected):
        raise InvalidInput(f"input {spec.name!r} must have shape {list(expected)} (-1: any size); got {list(value.shape)}")
    for axis, (want, got) in enumerate(zip(expected, value.shape, strict=True)):
        if want != -1 and want != got:
            raise InvalidInput(
                f"input {spec.name!r} has size {got} on axis {axis} but the model needs {want} "
                f"(shape {list(expected)}, -1: any size)"
            )
    if value.shape[0] == 0:
        raise InvalidInput(f"input {spec.name!r} has an empty batch; send at least one example")
    if value.dtype != np.dtype(spec.dtype):
        if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
            raise InvalidInput(f"input {spec.name!r} must be {spec.dtype}; got {value.dtype} that cannot be cast safely")
        value = value.astype(spec.dtype)
    return np.ascontiguousarray(value)


def same_batch(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feeds` as they are, once every input has the same number of rows: one batch, split back by rows later."""
    if len(feeds) > 1:
        batches = {value.shape[0] for value in feeds.values()}
        if len(batches) > 1:
            raise InvalidInput(f"inputs have different batch sizes {sorted(batches)}; give every input the same")
    return feeds
