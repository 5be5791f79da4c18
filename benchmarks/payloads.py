"""The request bodies the benchmarks send: real photographs, as V2 binary tensors, JPEG bytes or bare tensors.

Written to files by the orchestrator (which imports inferd to preprocess them), so that the load generator
needs nothing but its HTTP client.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from harness import DEFAULT_PACKAGE

from inferd.bench.load.bodies import v2_binary_body

IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "cat")


def photos_as_jpeg(quality: int = 90) -> dict[str, bytes]:
    """Real photographs from scikit-image, JPEG-encoded with Pillow."""
    from PIL import Image
    from skimage import data

    encoded = {}
    for name in IMAGES:
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, format="JPEG", quality=quality)
        encoded[name] = buffer.getvalue()
    return encoded


def binary_tensor_body(tensor: Any) -> tuple[bytes, int]:
    """A V2 request with one preprocessed image as FP32 binary tensor data ([1,3,224,224], 602112 bytes), the
    logits asked for as binary, as tritonclient does by default (and as `inferd loadtest` sends it)."""
    return v2_binary_body([("image", "FP32", tensor.astype("<f4"))], ["logits"])


def jpeg_bytes_body(jpeg: bytes) -> tuple[bytes, int]:
    """A V2 request with one encoded image as a BYTES element (4-byte little-endian length, then the file)."""
    return v2_binary_body([("image", "BYTES", np.array([jpeg], dtype=object))], ["logits"])


def write_payloads(kind: str, directory: Path, package: Path = DEFAULT_PACKAGE) -> list[dict[str, Any]]:
    """Write one request body per photo; returns what the generator's spec needs ("path", "header_length").

    Kind "tensor" writes the bare tensor, which the generator copies into a registered shared-memory region
    before each request (`load_clients.SharedMemoryInputs`) or sends over gRPC (`inferd.bench.load.triton_grpc`);
    "input" describes it.
    """
    from inferd.io import preprocess_image
    from inferd.package import ModelPackage
    from inferd.types import ImageType

    spec = ModelPackage.load(package).manifest.inputs[0]
    assert isinstance(spec, ImageType), "the benchmarks need a model whose input is an image"
    directory.mkdir(parents=True, exist_ok=True)
    payloads = []
    for name, jpeg in photos_as_jpeg().items():
        if kind == "binary":
            body, header_length = binary_tensor_body(preprocess_image(jpeg, spec)[None])
        elif kind == "jpeg":
            body, header_length = jpeg_bytes_body(jpeg)
        elif kind == "tensor":
            tensor = preprocess_image(jpeg, spec)[None]
            body, header_length = tensor.tobytes(), 0
        else:
            raise ValueError(kind)
        path = directory / f"{kind}-{name}.bin"
        path.write_bytes(body)
        payload: dict[str, Any] = {"path": str(path), "header_length": header_length, "bytes": len(body), "image": name}
        if kind == "tensor":
            payload["input"] = {"name": spec.name, "shape": list(tensor.shape), "datatype": "FP32"}
        payloads.append(payload)
    return payloads
