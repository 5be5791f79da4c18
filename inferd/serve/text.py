"""Which served models take text, and the error that sends a caller of the wrong route to the right one.

A text model's requests carry their strings through the dynamic batcher, which
tokenizes each merged batch as one (`inferd.serve.batching.inputs.TextInputs`).
Both faces of the server (`POST /embed` and V2 with BYTES inputs) find the text input here.
"""

from __future__ import annotations

from inferd.io import text_input
from inferd.runtime import CompiledModel
from inferd.types import ImageType, TextType


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
