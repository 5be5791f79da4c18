"""The request bodies a load generator sends, prepared once as bytes: V2 binary and JSON, images, texts.

Each `Prepared` holds its body, its headers and the check of a 200's answer, which looks at bytes only
(a header, a prefix) so that checking costs the generator next to nothing per request.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from inferd.serve.v2.types import datatype_of

INFERENCE_HEADER = "Inference-Header-Content-Length"

Check = Callable[[Mapping[str, str], bytes], str | None]
Tensors = list[tuple[str, str, np.ndarray]]
"""One request's inputs: (name, V2 datatype, array); a BYTES array holds bytes objects."""


class Prepared(NamedTuple):
    body: bytes
    headers: dict[str, str]
    check: Check


def bytes_element(value: bytes) -> bytes:
    """A V2 BYTES element in binary form: its length as 4 bytes little-endian, then the bytes."""
    return len(value).to_bytes(4, "little") + value


def raw_contents(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(bytes_element(bytes(v)) for v in array.reshape(-1))
    return np.ascontiguousarray(array).tobytes()


def v2_binary_body(inputs: Tensors, outputs: list[str]) -> tuple[bytes, int]:
    """A V2 request with every input as binary data and every output asked for as binary, as tritonclient
    sends it; returns the body and the length of its JSON header."""
    described, raw = [], []
    for name, datatype, array in inputs:
        contents = raw_contents(datatype, array)
        described.append({"name": name, "datatype": datatype, "shape": list(array.shape),
                          "parameters": {"binary_data_size": len(contents)}})
        raw.append(contents)
    header = {"inputs": described, "outputs": [{"name": n, "parameters": {"binary_data": True}} for n in outputs]}
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b"".join(raw), len(text)


def _binary_answer(headers: Mapping[str, str], body: bytes) -> str | None:
    length = int(headers.get(INFERENCE_HEADER, "0") or 0)
    return None if 0 < length < len(body) else "unexpected_body"


def _json_answer(key: bytes) -> Check:
    def check(headers: Mapping[str, str], body: bytes) -> str | None:
        return None if body[:1] == b"{" and key in body else "unexpected_body"

    return check


def v2_binary(inputs: Tensors, outputs: list[str]) -> Prepared:
    body, header_length = v2_binary_body(inputs, outputs)
    headers = {INFERENCE_HEADER: str(header_length), "Content-Type": "application/octet-stream"}
    return Prepared(body, headers, _binary_answer)


def v2_json(inputs: Tensors, outputs: list[str]) -> Prepared:
    """A V2 request with every tensor as a JSON list (BYTES elements as strings), outputs as JSON."""

    def data(datatype: str, array: np.ndarray) -> list[Any]:
        if datatype == "BYTES":
            return [bytes(v).decode("utf-8", "replace") for v in array.reshape(-1)]
        flat: list[Any] = array.reshape(-1).tolist()
        return flat

    body = {"inputs": [{"name": n, "datatype": d, "shape": list(a.shape), "data": data(d, a)} for n, d, a in inputs],
            "outputs": [{"name": n} for n in outputs]}
    return Prepared(json.dumps(body, separators=(",", ":")).encode(), {"Content-Type": "application/json"},
                    _json_answer(b'"outputs"'))


def image_upload(name: str, data: bytes) -> Prepared:
    """One image as the simple REST /predict route takes it: a multipart form with the field `image`."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return Prepared(body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, _json_answer(b'"predictions"'))


def texts_for_embed(texts: list[str]) -> Prepared:
    """Texts as /embed takes them: a JSON list of strings."""
    return Prepared(json.dumps(texts).encode(), {"Content-Type": "application/json"}, _json_answer(b'"embeddings"'))


def tensors_from_arrays(arrays: Mapping[str, np.ndarray]) -> Tensors:
    """A user's arrays (an .npz's), each with the V2 datatype of its numpy type; strings become BYTES."""
    tensors: Tensors = []
    for name, array in arrays.items():
        if array.dtype.kind in "US":
            tensors.append((name, "BYTES", np.array([str(v).encode() for v in array.reshape(-1)],
                                                    dtype=object).reshape(array.shape)))
        else:
            tensors.append((name, datatype_of(array.dtype), array))
    return tensors
