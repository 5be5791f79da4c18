"""Values for schemathesis that JSON Schema can name but not describe: real photographs for the image fields
(a media type says "a JPEG", not which bytes make one) and working Triton configs for a load's `config` string
(its JSON is checked against contentSchema, which JSON Schema only annotates).

Loaded by `tests/test_api_document.py` through SCHEMATHESIS_HOOKS.
"""

from __future__ import annotations

import io
import json

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from inferd.serve.v2.schema import CONFIG_FORMAT

_PILLOW_NAMES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF",
                 "image/bmp": "BMP", "image/tiff": "TIFF"}


def _photos() -> list[Image.Image]:
    """Real photographs, whole and cut small (a small one keeps the run quick; both sizes exercise the resize)."""
    whole = [Image.fromarray(photo) for photo in (data.chelsea(), data.coffee(), data.astronaut())]
    return whole + [photo.resize((96, 64)) for photo in whole] + [Image.fromarray(np.asarray(data.camera()))]


def _encoded(fmt: str) -> list[bytes]:
    encoded = []
    for photo in _photos():
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt)
        encoded.append(buffer.getvalue())
    return encoded


for media_type, pillow_name in _PILLOW_NAMES.items():
    schemathesis.openapi.media_type(media_type, st.sampled_from(_encoded(pillow_name)))

# Configs a load takes for any model: each within the serving settings' bounds and consistent with itself.
_CONFIGS = [
    {},
    {"max_batch_size": 4},
    {"max_batch_size": 0},
    {"dynamic_batching": {"max_queue_delay_microseconds": 500, "preferred_batch_size": [2]}},
    {"dynamic_batching": {"default_queue_policy": {"max_queue_size": 16, "default_timeout_microseconds": 0}}},
    {"instance_group": [{"count": 2, "kind": "KIND_CPU"}]},
]
schemathesis.openapi.format(CONFIG_FORMAT, st.sampled_from([json.dumps(config) for config in _CONFIGS]))
