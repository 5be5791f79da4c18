"""Text models over HTTP payloads: which models take text, and strings in, embeddings out, batched across requests.

A text model's requests carry their strings through the dynamic batcher, which
tokenizes each merged batch as one (`inferd.serve.batching.inputs.TextInputs`).
Both faces of the server (`POST /embed` and V2 with BYTES inputs) go through here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from inferd.errors import InvalidInput
from inferd.io import text_input
from inferd.runtime import CompiledModel
from inferd.types import ImageType, TextType

if TYPE_CHECKING:
    from inferd.serve.repository import ModelEntry


def takes_text(model: CompiledModel) -> bool:
    return any(isinstance(spec, TextType) for spec in model.manifest.inputs)


def text_spec(model: CompiledModel, name: str) -> TextType:
    """The model's text input, or an error that sends the caller to the route the model does serve.

    `name` is the served name (the repository's directory), which routes use and a package's own name may not be.
    """
    manifest = model.manifest
    hint = (f"it takes images: POST /predict/{name}" if any(isinstance(s, ImageType) for s in manifest.inputs)
            else f"send tensors to /v2/models/{name}/infer")
    return text_input(manifest, hint=hint, name=name)


async def embed(
    entry: ModelEntry, texts: Sequence[str], *, timeout_s: float | None = None,
    disconnected: Callable[[], Awaitable[object]] | None = None,
) -> np.ndarray:
    """One embedding row per text, through the model's dynamic batcher; the model must have a single output."""
    spec = text_spec(entry.model, entry.name)
    outputs = [output.name for output in entry.model.manifest.outputs]
    if len(outputs) != 1:
        raise InvalidInput(f"model {entry.name!r} has outputs {outputs}, not one embedding; "
                           f"use /v2/models/{entry.name}/infer")
    result = await entry.infer({spec.name: list(texts)}, timeout_s=timeout_s, disconnected=disconnected)
    return result[outputs[0]]

