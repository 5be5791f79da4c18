"""Request payloads in, presentable results out: image decoding and preprocessing, text tokenization,
classification ranking, text embedding.

The CLI, the Python API and the server all decode inputs and post-process outputs
here, so a picture gives the same tensor and the same top-5, and a text the same
tokens, whichever way it arrives. This package imports only `inferd.types`, `inferd.manifest` and `inferd.errors`, never
`inferd.runtime` or `inferd.serve`, so it stays cheap to import and free of cycles.
"""

from __future__ import annotations

from inferd.io.classify import Prediction, softmax, top_k
from inferd.io.images import DEFAULT_MAX_PIXELS, decode_image, image_input, preprocess_image, to_tensor
from inferd.io.text import (
    MAX_TEXT_CHARS,
    TextTokenizer,
    embed,
    infer_in_chunks,
    load_tokenizer,
    text_input,
    texts_from,
    tokenize,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_TEXT_CHARS",
    "Prediction",
    "TextTokenizer",
    "decode_image",
    "embed",
    "image_input",
    "infer_in_chunks",
    "load_tokenizer",
    "preprocess_image",
    "softmax",
    "text_input",
    "texts_from",
    "to_tensor",
    "tokenize",
    "top_k",
]
