"""Text embedding over HTTP payloads: strings in, embeddings out, batched across requests.

Tokenizing pads a batch to its longest text, so requests tokenized apart could
not be merged: their id tensors would differ in width. Padding them again at
merge time would need to know which tensor is the mask and what the pad id is,
which the tokenizer already knows. So a text model's requests carry their
strings through the dynamic batcher, and `TextInputs.run` tokenizes each merged
batch at once on the batcher's worker thread, off the event loop: one padding
per batch, exactly what the model computes for those texts sent together.

Both faces of the server (`POST /embed` and V2 with BYTES inputs) go through here.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inferd.errors import InvalidInput
from inferd.io import TextTokenizer, infer_in_chunks, load_tokenizer, text_input, texts_from
from inferd.runtime import CompiledModel
from inferd.serve.batcher import Outputs, Signature
from inferd.types import ImageType, TextType

if TYPE_CHECKING:
    from inferd.serve.repository import ModelEntry

_TEXT_SIGNATURE: Signature = (("text", (), "str"),)
"""Every text request may join every other: the merged batch is tokenized, and so padded, as one."""


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


class TextInputs:
    """The batcher's view of a text model: requests hold strings, each merged batch is tokenized as one.

    A batch runs in chunks of at most `chunk_rows` texts, grouped by length, so
    that one request with thousands of texts costs time, not memory for a
    thousands × max_length activation tensor, and short texts are not padded to a long one.
    """

    def __init__(self, model: CompiledModel, *, name: str | None = None, chunk_rows: int = 32,
                 tokenizer: TextTokenizer | None = None) -> None:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        self.model = model
        self.name = name or model.name
        self.spec = text_spec(model, self.name)
        self.tokenizer = tokenizer or load_tokenizer(model.package)
        self.chunk_rows = chunk_rows

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if list(feeds) != [self.spec.name]:
            raise InvalidInput(f"model {self.name!r} takes one input {self.spec.name!r} (a list of texts); "
                               f"got {sorted(feeds)}")
        values = feeds[self.spec.name]
        if isinstance(values, np.ndarray) and values.ndim == 1:
            values = values.tolist()
        if not isinstance(values, list | tuple):
            shape = f" of shape {list(values.shape)}" if isinstance(values, np.ndarray) else ""
            raise InvalidInput(f"input {self.spec.name!r} must be a flat list of texts; got {type(values).__name__}{shape}")
        return {self.spec.name: _strings(texts_from(values))}

    def signature(self, feeds: Mapping[str, np.ndarray]) -> Signature:
        return _TEXT_SIGNATURE

    def run(self, requests: list[dict[str, np.ndarray]]) -> tuple[list[Outputs], float]:
        texts = [text for feeds in requests for text in feeds[self.spec.name].tolist()]
        engine_s: list[float] = []

        def infer(tokens: dict[str, np.ndarray]) -> Outputs:
            started = time.perf_counter()
            try:
                return self.model.engine.infer(tokens)
            finally:
                engine_s.append(time.perf_counter() - started)

        outputs = infer_in_chunks(self.tokenizer, texts, infer, chunk_rows=self.chunk_rows)
        bounds = np.cumsum([len(feeds[self.spec.name]) for feeds in requests])[:-1]
        split = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(requests))], sum(engine_s)


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
    result = await entry.infer({spec.name: _strings(texts)}, timeout_s=timeout_s, disconnected=disconnected)
    return result[outputs[0]]


def _strings(texts: Sequence[str]) -> np.ndarray:
    """A 1-D object array of the texts: the batcher counts rows on the leading axis of an array."""
    array = np.empty(len(texts), dtype=object)
    array[:] = list(texts)
    return array
