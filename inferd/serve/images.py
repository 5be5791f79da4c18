"""Image classification over HTTP payloads: decode off the event loop, infer, rank labels.

Both faces of the server (simple REST and V2 with BYTES inputs) classify images
through here, so they give the same answer for the same picture.
"""

from __future__ import annotations

from collections.abc import Sequence

import anyio.to_thread
import numpy as np

from inferd.errors import InvalidImage, InvalidInput
from inferd.io import Prediction, preprocess_image, top_k
from inferd.runtime import CompiledModel
from inferd.types import ImageType


def image_input(model: CompiledModel) -> ImageType:
    images = [spec for spec in model.manifest.inputs if isinstance(spec, ImageType)]
    if len(images) != 1 or len(model.manifest.inputs) != 1:
        raise InvalidInput(
            f"model {model.name!r} does not take a single image; send tensors to /v2/models/{model.name}/infer"
        )
    return images[0]


def decode_batch(model: CompiledModel, images: Sequence[bytes], max_pixels: int) -> np.ndarray:
    spec = image_input(model)
    tensors = []
    for index, data in enumerate(images):
        try:
            tensors.append(preprocess_image(data, spec, max_pixels=max_pixels))
        except InvalidImage as exc:
            if len(images) > 1:
                exc.message = f"image {index}: {exc.message}"
                exc.args = (exc.message,)
            raise
    return np.stack(tensors)


async def classify(
    model: CompiledModel, images: Sequence[bytes], *, k: int, max_pixels: int
) -> list[list[Prediction]]:
    """Top-k labels for each image, decoding on a worker thread and inferring through the model's bound."""
    if model.manifest.classifier is None:
        raise InvalidInput(f"model {model.name!r} is not a classifier; use /v2/models/{model.name}/infer")
    batch = await anyio.to_thread.run_sync(decode_batch, model, images, max_pixels)
    spec = image_input(model)
    classifier = model.manifest.classifier
    if model.manifest.batch_dynamic or len(batch) == 1:
        scores = (await model.predict_async({spec.name: batch}))[classifier.output]
    else:
        singles = [await model.predict_async({spec.name: row[np.newaxis]}) for row in batch]
        scores = np.concatenate([outputs[classifier.output] for outputs in singles])
    return top_k(scores, classifier.labels, k, activation=classifier.activation)
