"""Hostile clients against real servers on loopback (issue 18): numbers and parameters that cost a 500, heads too
large or too slow, too many connections, one row limit on every face, settings that cannot hold, and what the
server tells a caller without the API key."""

from __future__ import annotations

import io
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferd.runtime import devices
from tests.conftest import LiveServer

KEY = "hardening-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
IMAGE_MODEL, TEXT_MODEL = "efficientnet-lite0", "minilm-l6"
HUGE = "9" * 5000  # past Python's 4,300-digit limit on converting a number


@pytest.fixture(scope="module")
def faces(default_repository: Path) -> Iterator[LiveServer]:
    """Both faces, with an API key, over the default repository (an image and a text model)."""
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=default_repository, grpc_port=0, api_key=KEY)) as live:
        yield live


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No models (the guards sit before any route), a short head timeout and a cap of 4 connections per face."""
    from inferd.serve import ServerSettings

    settings = ServerSettings(repository=tmp_path_factory.mktemp("empty"), head_timeout_s=1.0, max_connections=4,
                              grpc_port=0)
    with LiveServer(settings) as live:
        yield live


def _v2(inputs: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"inputs": inputs, **fields}


IMAGE = {"name": "image", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [0.0] * (3 * 224 * 224)}

# Each body is JSON text, so that a number can be written as the client wrote it.
HUGE_NUMBERS = {
    "in data": f'{{"inputs": [{{"name": "image", "datatype": "FP32", "shape": [1], "data": [{HUGE}]}}]}}',
    "in a shape": f'{{"inputs": [{{"name": "image", "datatype": "FP32", "shape": [{HUGE}], "data": [1]}}]}}',
    "in parameters": f'{{"parameters": {{"priority": {HUGE}}}, "inputs": []}}',
    "negative": f'{{"inputs": [{{"name": "image", "datatype": "INT64", "shape": [1], "data": [-{HUGE}]}}]}}',
}


@pytest.mark.parametrize("where", list(HUGE_NUMBERS))
def test_a_huge_integer_in_a_v2_body_is_a_400(faces: LiveServer, where: str) -> None:
    response = httpx.post(f"{faces.url}/v2/models/{IMAGE_MODEL}/infer", content=HUGE_NUMBERS[where], headers=AUTH)
    assert response.status_code == 400, response.text[:300]
    assert "more than 4300 digits" in response.json()["error"]


def test_a_huge_binary_header_length_is_a_400(faces: LiveServer) -> None:
    headers = {**AUTH, "Inference-Header-Content-Length": HUGE}
    response = httpx.post(f"{faces.url}/v2/models/{IMAGE_MODEL}/infer", content=b"{}", headers=headers)
    assert response.status_code == 400, response.text[:300]
    assert "5000-digit number but the whole body is 2 bytes" in response.json()["error"]


def test_a_huge_integer_in_an_embed_list_is_a_400(faces: LiveServer) -> None:
    response = httpx.post(f"{faces.url}/embed/{TEXT_MODEL}", content=f'["a cat", {HUGE}]', headers=AUTH)
    assert response.status_code == 400, response.text[:300]
    assert "more than 4300 digits" in response.json()["error"]


@pytest.mark.parametrize("timeout", [math.nan, math.inf, 1e300])
def test_a_timeout_that_is_not_a_finite_deadline_is_a_400_over_http(faces: LiveServer, timeout: float) -> None:
    body = json.dumps(_v2([IMAGE], parameters={"timeout": timeout}))  # NaN and Infinity as Python writes them
    response = httpx.post(f"{faces.url}/v2/models/{IMAGE_MODEL}/infer", content=body, headers=AUTH)
    assert response.status_code == 400, response.text[:300]
    assert "timeout parameter must be a positive number of microseconds up to" in response.json()["error"]


def test_a_nan_timeout_is_invalid_argument_over_grpc(faces: LiveServer) -> None:
    request = service_pb2.ModelInferRequest(model_name=IMAGE_MODEL, raw_input_contents=[bytes(4 * 3 * 224 * 224)])
    request.inputs.add(name="image", datatype="FP32", shape=[1, 3, 224, 224])
    request.parameters["timeout"].double_param = math.nan
    with grpc.insecure_channel(f"127.0.0.1:{faces.app.state.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=[("authorization", f"Bearer {KEY}")], timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "timeout parameter" in caught.value.details()


def _load(live: LiveServer, config: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{live.url}/v2/repository/models/{IMAGE_MODEL}/load", headers=AUTH, timeout=120,
                      json={"parameters": {"config": json.dumps(config)}})


CONFIGS_THAT_CANNOT_HOLD: dict[str, tuple[dict[str, Any], str]] = {
    "preferred size 0": ({"dynamic_batching": {"preferred_batch_size": [0]}}, "between 1 and max_batch_size"),
    "preferred size past the batch": ({"max_batch_size": 4, "dynamic_batching": {"preferred_batch_size": [8]}},
                                      "between 1 and max_batch_size"),
    "queue of 2^64": ({"dynamic_batching": {"default_queue_policy": {"max_queue_size": 2**64}}},
                      "less than or equal to 65536"),
    "a NaN delay": ({"dynamic_batching": {"max_queue_delay_microseconds": math.nan}}, "finite number"),
    "a GPU on a machine with none": ({"instance_group": [{"kind": "KIND_GPU", "count": 1}]},
                                     "no backend on this machine reaches a GPU"),
    "an unknown kind": ({"instance_group": [{"kind": "KIND_TPU", "count": 1}]}, "is not one of"),
}


@pytest.mark.parametrize("case", list(CONFIGS_THAT_CANNOT_HOLD))
def test_a_load_config_that_cannot_hold_is_refused(faces: LiveServer, case: str) -> None:
    config, words = CONFIGS_THAT_CANNOT_HOLD[case]
    if "GPU" in case and any(device.kind == "gpu" for device in devices()):
        pytest.skip("this machine has a GPU")
    response = _load(faces, config)
    assert response.status_code == 400, response.text[:300]
    assert words in response.json()["error"]


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_face_refuses_more_rows_than_the_limit_alike(faces: LiveServer) -> None:
    """257 rows, one past the default max_request_rows, by each way in: 413 (gRPC RESOURCE_EXHAUSTED) alike."""
    texts = ["a cat"] * 257
    answers = {
        "POST /embed": httpx.post(f"{faces.url}/embed/{TEXT_MODEL}", json=texts, headers=AUTH, timeout=60),
        "V2 HTTP": httpx.post(f"{faces.url}/v2/models/{TEXT_MODEL}/infer", headers=AUTH, timeout=60, json=_v2(
            [{"name": "text", "datatype": "BYTES", "shape": [257], "data": texts}])),
        "POST /predict/batch": httpx.post(f"{faces.url}/predict/{IMAGE_MODEL}/batch", headers=AUTH, timeout=60,
                                          files=[("images", (f"{i}.png", _png(), "image/png")) for i in range(257)]),
    }
    for face, response in answers.items():
        assert response.status_code == 413, (face, response.text[:300])
        assert "at most 256 per request" in response.json()["error"], face
    client = triton.InferenceServerClient(f"127.0.0.1:{faces.app.state.grpc_port}")
    text = triton.InferInput("text", [257], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    with pytest.raises(InferenceServerException) as caught:
        client.infer(TEXT_MODEL, [text], headers={"authorization": f"Bearer {KEY}"})
    assert caught.value.status() == "StatusCode.RESOURCE_EXHAUSTED" and "at most 256 per request" in caught.value.message()


def test_without_the_key_health_names_no_model_and_metrics_are_closed(faces: LiveServer) -> None:
    assert httpx.get(f"{faces.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{faces.url}/metrics").status_code == 401
    scraped = httpx.get(f"{faces.url}/metrics", headers=AUTH)
    assert scraped.status_code == 200 and IMAGE_MODEL in scraped.text


# -- heads too large or too slow, and too many connections --------------------------------------------------


def _connect(live: LiveServer, port: int | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port or live.port))
    sock.settimeout(5)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


SLOW_HEADS = {"nothing": [], "half a request line": [b"GET /v2/health/li"],
              "half the headers": [b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"],
              "a byte at a time": [bytes([c]) for c in b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"]}


@pytest.mark.parametrize("case", list(SLOW_HEADS))
def test_a_head_that_does_not_complete_in_time_is_closed(guarded: LiveServer, case: str) -> None:
    started = time.monotonic()
    with _connect(guarded) as sock:
        for piece in SLOW_HEADS[case]:
            try:
                sock.sendall(piece)
            except OSError:
                break  # closed on us mid-trickle
            time.sleep(0.1)
        answer = _answer(sock)
    assert time.monotonic() - started < 4.5  # the head timeout is 1 s, whatever arrives within it
    if case == "nothing":
        assert answer == b""  # a connection that never spoke is just closed
    else:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"head timeout (1 s)" in answer


def test_a_huge_header_is_refused_without_stalling_anyone(guarded: LiveServer) -> None:
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=guarded.url, timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/v2/health/live").status_code == 200
                latencies.append(time.perf_counter() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    while len(latencies) < 3 and prober.is_alive():
        time.sleep(0.01)
    sent = 0
    with _connect(guarded) as sock:
        sock.settimeout(60)
        try:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < 100_000_000:
                sock.sendall(b"a" * 1_000_000)
                sent += 1_000_000
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: the rest is never sent
        answer = _answer(sock)
    time.sleep(0.2)
    done.set()
    prober.join()
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert sent < 100_000_000 and len(latencies) > 5
    assert max(latencies) < 2.0, max(latencies)  # uvicorn alone: seconds, the whole loop held by one parse


def test_connections_past_the_cap_are_refused_at_once(guarded: LiveServer) -> None:
    connections = guarded.server.server_state.connections
    held = [_connect(guarded) for _ in range(4)]
    try:
        deadline = time.monotonic() + 5
        while len(connections) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        with _connect(guarded) as extra:
            answer = _answer(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1" in answer and b"4 connections open" in answer
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert httpx.get(f"{guarded.url}/v2/health/live").status_code == 200


def test_the_grpc_face_closes_silent_and_surplus_connections(guarded: LiveServer) -> None:
    port = guarded.app.state.grpc_port
    started = time.monotonic()
    held = [_connect(guarded, port) for _ in range(4)]
    try:
        with _connect(guarded, port) as extra:
            assert _answer(extra) == b""  # past the cap: closed at once
        for sock in held:
            _answer(sock)  # gRPC's SETTINGS frame, then the close: no HTTP/2 preface within the handshake timeout
        assert time.monotonic() - started < 4.5
    finally:
        for sock in held:
            sock.close()
