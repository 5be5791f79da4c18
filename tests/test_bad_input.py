"""A corpus of wrong requests: every one gets a 4xx with a JSON message, and the server keeps serving.

Runs against its own server with an API key and a small body limit, so the
authentication and size cases are exercised for real too.
"""

from __future__ import annotations

import gzip
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import CAT_LABELS, LiveServer

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
INFER = "/v2/models/efficientnet-lite0/infer"
HEADER = "Inference-Header-Content-Length"
BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def guarded(default_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    settings = ServerSettings(repository=default_repository, api_key=KEY, max_body_bytes=BODY_LIMIT, body_timeout_s=1.0)
    with LiveServer(settings) as live:
        yield live


def _png(width: int, height: int, mode: str = "1") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _tensor_json(shape: list[int], datatype: str = "FP32", data: Any = None, name: str = "image") -> bytes:
    count = int(np.prod(shape)) if shape else 1
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data if data is not None else [0.0] * count}]}).encode()


def _binary(shape: list[int], size: int, actual: int, header_extra: dict[str, Any] | None = None) -> tuple[bytes, int]:
    header = json.dumps({"inputs": [{"name": "image", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}], **(header_extra or {})}).encode()
    return header + bytes(actual), len(header)


def _cases() -> dict[str, dict[str, Any]]:
    small = [1, 3, 224, 224]
    cases: dict[str, dict[str, Any]] = {
        # -- JSON structure
        "not json": {"body": b"{inputs: nope"},
        "json array": {"body": b"[1, 2, 3]"},
        "json string": {"body": b'"hello"'},
        "empty body": {"body": b""},
        "no inputs": {"body": b"{}"},
        "inputs not list": {"body": b'{"inputs": {"name": "image"}}'},
        "empty inputs": {"body": b'{"inputs": []}'},
        "input not object": {"body": b'{"inputs": [42]}'},
        "input without name": {"body": b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}'},
        "input without datatype": {"body": b'{"inputs": [{"name": "image", "shape": [1], "data": [1]}]}'},
        "input without shape": {"body": b'{"inputs": [{"name": "image", "datatype": "FP32", "data": [1]}]}'},
        "input without data": {"body": b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1]}]}'},
        "unknown datatype": {"body": _tensor_json([1], "FP128", [1.0])},
        "negative dim": {"body": _tensor_json([-1, 3], "FP32", [0.0] * 3)},
        "string dim": {"body": json.dumps({"inputs": [{"name": "image", "shape": ["a"], "datatype": "FP32",
                                                        "data": [1]}]}).encode()},
        "id not string": {"body": json.dumps({"id": 5, "inputs": []}).encode()},
        "parameters not object": {"body": json.dumps({"parameters": [1], "inputs": []}).encode()},
        "outputs not list": {"body": json.dumps({"outputs": "logits", "inputs": []}).encode()},
        "duplicate inputs": {"body": json.dumps({"inputs": [
            {"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]},
            {"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}).encode()},
        # -- shapes and datatypes against the model
        "wrong input name": {"body": _tensor_json(small, name="pixels")},
        "wrong rank": {"body": _tensor_json([3, 224, 224, 1, 1])},
        "wrong spatial size": {"body": _tensor_json([1, 3, 100, 100])},
        "wrong channels": {"body": _tensor_json([1, 4, 224, 224])},
        "int datatype": {"body": _tensor_json([1, 3, 2, 2], "INT32", [0] * 12)},
        "fp16 for fp32 model": {"body": _tensor_json([1, 3, 2, 2], "FP16", [0.0] * 12)},
        "data shorter than shape": {"body": _tensor_json(small, data=[0.0] * 10)},
        "data longer than shape": {"body": _tensor_json([2], data=[0.0] * 3)},
        "strings for fp32": {"body": _tensor_json([2], data=["a", "b"])},
        "ragged nested data": {"body": _tensor_json([2, 2], data=[[1.0, 2.0], [3.0]])},
        "bools for fp32": {"body": _tensor_json([2], data=[True, False])},
        "empty batch": {"body": _tensor_json([0, 3, 224, 224], data=[])},
        "unknown requested output": {"body": json.dumps({"inputs": json.loads(_tensor_json(small))["inputs"],
                                                          "outputs": [{"name": "probabilities"}]}).encode()},
        "bad classification count": {"body": json.dumps({"inputs": json.loads(_tensor_json(small))["inputs"],
                                                          "outputs": [{"name": "logits",
                                                                       "parameters": {"classification": -1}}]}).encode()},
        "bad timeout parameter": {"body": json.dumps({"inputs": json.loads(_tensor_json(small))["inputs"],
                                                       "parameters": {"timeout": "soon"}}).encode()},
        "huge shape": {"body": _tensor_json([100000, 3, 224, 224], data=[0.0])},
        # -- binary extension
        "binary size too small": {"raw": _binary(small, 16, 16)},
        "binary size lies (short body)": {"raw": _binary([1, 3, 2, 2], 48, 20)},
        "binary trailing bytes": {"raw": _binary([1, 3, 2, 2], 48, 60)},
        "header length not a number": {"body": _tensor_json([1]), "headers": {HEADER: "abc"}},
        "header length negative": {"body": _tensor_json([1]), "headers": {HEADER: "-5"}},
        "header length beyond body": {"body": _tensor_json([1]), "headers": {HEADER: "999999"}},
        "header length cuts json": {"body": _tensor_json([1]), "headers": {HEADER: "10"}},
        # -- images as BYTES and multipart
        "corrupt image bytes": {"bytes_image": b"\xff\xd8\xff\xe0garbage"},
        "text as image": {"bytes_image": b"just some text"},
        "empty image": {"bytes_image": b""},
        "huge image": {"bytes_image": _png(20000, 20000), "status": 413},
        "multipart corrupt": {"multipart": b"\x89PNG\r\n\x1a\nbroken"},
        "multipart text": {"multipart": b"hello world"},
        "multipart empty": {"multipart": b""},
        "multipart huge png": {"multipart": _png(20000, 20000), "status": 413},
        "multipart wrong field": {"multipart": _png(8, 8, "RGB"), "field": "photo"},
        "multipart not multipart": {"path": "/predict", "body": b'{"image": "cat"}'},
        "bad top_k": {"path": "/predict?top_k=0", "multipart": _png(8, 8, "RGB")},
        "bad timeout_ms": {"path": "/predict?timeout_ms=-1", "multipart": _png(8, 8, "RGB")},
        # -- routing, names, versions
        "unknown model": {"path": "/v2/models/nope/infer", "body": _tensor_json(small), "status": 404},
        "unknown version": {"path": "/v2/models/efficientnet-lite0/versions/7/infer", "body": _tensor_json(small),
                            "status": 404},
        "bad version name": {"path": "/v2/models/efficientnet-lite0/versions/..%2e/infer", "body": b"{}"},
        "dotdot model": {"path": "/v2/models/..%2e%2e/infer", "body": b"{}"},
        "dotted model": {"path": "/v2/models/.hidden/ready", "method": "GET"},
        "model with space": {"path": "/v2/models/a%20b", "method": "GET"},
        "encoded slash model": {"path": "/predict/..%2F..%2Fetc%2Fpasswd", "multipart": _png(8, 8, "RGB")},
        "load unknown model": {"path": "/v2/repository/models/nope/load", "body": b"{}", "status": 404},
        "unload unknown model": {"path": "/v2/repository/models/nope/unload", "body": b"{}", "status": 404},
        "load body not json": {"path": "/v2/repository/models/efficientnet-lite0/load", "body": b"{nope", "status": 400},
        "load unknown parameter": {"path": "/v2/repository/models/efficientnet-lite0/load",
                                   "body": b'{"parameters": {"colour": "red"}}', "status": 400},
        "log settings nested too deep": {"path": "/v2/logging", "body": b"[" * 100_000 + b"]" * 100_000, "status": 400},
        "index ready not boolean": {"path": "/v2/repository/index", "body": b'{"ready": "yes"}', "status": 400},
        "unload unknown parameter": {"path": "/v2/repository/models/efficientnet-lite0/unload",
                                     "body": b'{"parameters": {"force": true}}', "status": 400},
        "metadata unknown": {"path": "/v2/models/nope", "method": "GET", "status": 404},
        "config unknown": {"path": "/v2/models/nope/config", "method": "GET", "status": 404},
        "stats unknown": {"path": "/v2/models/nope/stats", "method": "GET", "status": 404},
        "unknown route": {"path": "/v3/everything", "method": "GET", "status": 404},
        "wrong method": {"path": INFER, "method": "GET", "status": 405},
        # -- authentication and size
        "missing api key": {"body": _tensor_json(small), "auth": {}, "status": 401},
        "wrong api key": {"body": _tensor_json(small), "auth": {"Authorization": "Bearer nope"}, "status": 401},
        "wrong x-api-key": {"body": _tensor_json(small), "auth": {"X-API-Key": "nope"}, "status": 401},
        "huge body": {"body": b"{" + b" " * (BODY_LIMIT + 10) + b"}", "status": 413},
        # -- content encodings
        "gzip header on a plain body": {"body": _tensor_json([1]), "headers": {"Content-Encoding": "gzip"}, "status": 400},
        "truncated gzip body": {"body": gzip.compress(_tensor_json(small))[:-12], "headers": {"Content-Encoding": "gzip"},
                                "status": 400},
        "gzip bomb": {"body": gzip.compress(b" " * (BODY_LIMIT * 4)), "headers": {"Content-Encoding": "gzip"},
                      "status": 413},
        "brotli body": {"body": b"\x0b\x02\x80{}\x03", "headers": {"Content-Encoding": "br"}, "status": 415},
        # -- shared memory, off on this server
        "register shared memory when off": {"path": "/v2/systemsharedmemory/region/in/register",
                                            "body": b'{"key": "/in", "offset": 0, "byte_size": 16}', "status": 403},
        "shared memory status when off": {"path": "/v2/systemsharedmemory/status", "method": "GET", "status": 403},
        "shared memory input when off": {"body": json.dumps({"inputs": [
            {"name": "image", "shape": small, "datatype": "FP32",
             "parameters": {"shared_memory_region": "in", "shared_memory_byte_size": 602112}}]}).encode(),
            "status": 403},
    }
    return cases


CASES = _cases()


def _send(server: LiveServer, case: dict[str, Any]) -> httpx.Response:
    path = case.get("path", INFER)
    headers = {**case.get("auth", AUTH), **case.get("headers", {})}
    url = f"{server.url}{path}"
    if "bytes_image" in case:
        payload = case["bytes_image"]
        header = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": len(payload) + 4}}]}).encode()
        body = header + len(payload).to_bytes(4, "little") + payload
        return httpx.post(url, content=body, headers={**headers, HEADER: str(len(header))}, timeout=60)
    if "multipart" in case:
        files = {case.get("field", "image"): ("upload", case["multipart"], "application/octet-stream")}
        return httpx.post(url if "path" in case else f"{server.url}/predict", files=files, headers=headers, timeout=60)
    if "raw" in case:
        body, length = case["raw"]
        return httpx.post(url, content=body, headers={**headers, HEADER: str(length)}, timeout=60)
    if case.get("method") == "GET":
        return httpx.get(url, headers=headers, timeout=60)
    return httpx.post(url, content=case["body"], headers=headers, timeout=60)


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("name", list(CASES))
def test_bad_request_gets_4xx_with_message(guarded: LiveServer, name: str) -> None:
    case = CASES[name]
    response = _send(guarded, case)
    expected = case.get("status")
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    if expected:
        assert response.status_code == expected, response.text[:300]
    body = response.json()
    assert isinstance(body.get("error"), str) and len(body["error"]) > 10, body


def _raw_http(server: LiveServer, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_truncated_body_and_lying_content_length(guarded: LiveServer) -> None:
    body = _tensor_json([1, 3, 224, 224])
    request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2]
    answer = _raw_http(guarded, request)
    assert not answer or answer.startswith(b"HTTP/1.1 4"), answer[:200]
    bogus = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
             "Content-Length: banana\r\n\r\n{}").encode()
    assert _raw_http(guarded, bogus).startswith(b"HTTP/1.1 4")


def test_stalled_body_is_a_408(guarded: LiveServer) -> None:
    """A V2 client that stops mid-body, still connected, is answered and cut off after --body-timeout."""
    body = _tensor_json([1, 3, 224, 224])
    request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[:1000]
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=30) as sock:
        sock.sendall(request)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, error = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert "--body-timeout" in json.loads(error)["error"]


def test_still_serving_after_corpus(guarded: LiveServer, chelsea_png: bytes) -> None:
    for case in CASES.values():
        assert _send(guarded, case).status_code < 500
    ok = httpx.post(f"{guarded.url}/predict", files={"image": ("c.png", chelsea_png)}, headers=AUTH, timeout=60)
    assert ok.status_code == 200
    assert {p["label"] for p in ok.json()["predictions"]} & CAT_LABELS
    assert httpx.get(f"{guarded.url}/health").status_code == 200  # open without a key
    assert httpx.get(f"{guarded.url}/metrics", headers=AUTH).status_code == 200  # metrics need the key
