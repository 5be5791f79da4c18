"""Image classification over HTTP payloads: decode off the event loop, infer, rank labels.

Both faces of the server (simple REST and V2 with BYTES inputs) classify images
through here, so they give the same answer for the same picture.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio.to_thread
import numpy as np

from inferd.errors import InvalidImage, InvalidInput
from inferd.io import Prediction, image_input, preprocess_image, top_k
from inferd.serve.phases import Phases
from inferd.types import ImageType, TextType

if TYPE_CHECKING:
    from inferd.serve.repository import ModelEntry


def image_spec(entry: ModelEntry) -> ImageType:
    """The model's image input, or an error that sends the caller to the route the model does serve.

    Routes are named by the served name (the repository's directory), not the
    package's own name, which may differ: a hint must name a URL that answers.
    """
    manifest = entry.model.manifest
    hint = (f"it takes text: POST /embed/{entry.name}" if any(isinstance(s, TextType) for s in manifest.inputs)
            else None)
    return image_input(manifest, hint=hint, name=entry.name)


def decode_batch(entry: ModelEntry, images: Sequence[bytes], max_pixels: int) -> np.ndarray:
    """Refuses too many images before decoding any, as the batcher refuses too many rows of any other input."""
    entry.config.check_rows(len(images), "images")
    spec = image_spec(entry)
    tensors = []
    for index, data in enumerate(images):
        try:
            tensors.append(preprocess_image(data, spec, max_pixels=max_pixels))
        except InvalidImage as exc:
            if len(images) == 1:
                raise
            raise type(exc)(f"image {index}: {exc.message}") from None
    return np.stack(tensors)


async def classify(
    entry: ModelEntry, images: Sequence[bytes], *, k: int, max_pixels: int, phases: Phases,
    timeout_s: float | None = None, disconnected: Callable[[], Awaitable[object]] | None = None,
) -> list[list[Prediction]]:
    """Top-k labels for each image: decode on a worker thread (input time in `phases`), infer through the model's
    dynamic batcher, rank (output time)."""
    spec = image_spec(entry)
    classifier = entry.model.manifest.classifier
    if classifier is None:
        raise InvalidInput(f"model {entry.name!r} is not a classifier; use /v2/models/{entry.name}/infer")
    with phases.input():
        batch = await anyio.to_thread.run_sync(decode_batch, entry, images, max_pixels)
    outputs = await entry.infer({spec.name: batch}, phases=phases, timeout_s=timeout_s, disconnected=disconnected)
    with phases.output():
        return top_k(outputs[classifier.output], classifier.labels, k, activation=classifier.activation)
