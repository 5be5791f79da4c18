"""Request payloads in, presentable results out: image decoding and preprocessing, classification ranking.

The CLI, the Python API and the server all decode inputs and post-process outputs
here, so a picture gives the same tensor and the same top-5 whichever way it
arrives. This package imports only `inferd.types`, `inferd.manifest` and `inferd.errors`, never
`inferd.runtime` or `inferd.serve`, so it stays cheap to import and free of cycles.
"""

from __future__ import annotations

from inferd.io.classify import Prediction, softmax, top_k
from inferd.io.images import DEFAULT_MAX_PIXELS, decode_image, image_input, preprocess_image, to_tensor

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "Prediction",
    "decode_image",
    "image_input",
    "preprocess_image",
    "softmax",
    "to_tensor",
    "top_k",
]
