"""The simple REST face on a real uvicorn server on loopback, with real photos and bad input."""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import CAT_LABELS, LiveServer, encode


def labels(response: httpx.Response) -> list[str]:
    return [p["label"] for p in response.json()["predictions"]]


def test_health_and_models(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    models = {model["name"]: model for model in httpx.get(f"{server.url}/models").json()["models"]}
    assert set(models) == {"efficientnet-lite0", "minilm-l6"}  # the default repository: an image and a text model
    assert models["efficientnet-lite0"]["labels"] == 1000


def test_predict_cat_and_coffee(server: LiveServer, chelsea_png: bytes, coffee_jpeg: bytes) -> None:
    cat = httpx.post(f"{server.url}/predict", files={"image": ("chelsea.png", chelsea_png, "image/png")})
    assert cat.status_code == 200, cat.text
    assert set(labels(cat)) & CAT_LABELS
    assert len(labels(cat)) == 5 and cat.json()["latency_ms"] > 0
    coffee = httpx.post(f"{server.url}/predict/efficientnet-lite0", params={"top_k": 3},
                        files={"image": ("coffee.jpg", coffee_jpeg, "image/jpeg")})
    assert len(labels(coffee)) == 3 and set(labels(coffee)) & {"espresso", "cup"}


def test_batch(server: LiveServer, chelsea_png: bytes, coffee_jpeg: bytes) -> None:
    response = httpx.post(
        f"{server.url}/predict/efficientnet-lite0/batch", params={"top_k": 5},
        files=[("images", ("a.png", chelsea_png, "image/png")), ("images", ("b.jpg", coffee_jpeg, "image/jpeg"))],
    )
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["filename"] == "a.png" and {p["label"] for p in first["predictions"]} & CAT_LABELS
    assert {p["label"] for p in second["predictions"]} & {"espresso", "cup"}


def _huge_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_UPLOADS = {
    "corrupt bytes": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, 400, "decode"),
    "text file": (b"hello, this is not an image\n", 400, "image"),
    "zero bytes": (b"", 400, "empty"),
    "huge png": (None, 413, "megapixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_bad_images_are_4xx(server: LiveServer, case: str) -> None:
    data, status, words = BAD_UPLOADS[case]
    payload = _huge_png() if data is None else data
    response = httpx.post(f"{server.url}/predict", files={"image": ("x", payload, "application/octet-stream")})
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


def test_truncated_jpeg(server: LiveServer, coffee_jpeg: bytes) -> None:
    response = httpx.post(f"{server.url}/predict", files={"image": ("x.jpg", coffee_jpeg[: len(coffee_jpeg) // 3])})
    assert response.status_code == 400 and "truncated" in response.json()["error"]


def test_request_mistakes_are_4xx(server: LiveServer, chelsea_png: bytes) -> None:
    wrong_field = httpx.post(f"{server.url}/predict", files={"picture": ("c.png", chelsea_png)})
    assert wrong_field.status_code == 400 and "image" in wrong_field.json()["error"]
    no_body = httpx.post(f"{server.url}/predict", json={"image": "cat"})
    assert no_body.status_code == 400 and "multipart" in no_body.json()["error"]
    unknown = httpx.post(f"{server.url}/predict/resnet-9000", files={"image": ("c.png", chelsea_png)})
    assert unknown.status_code == 404 and "efficientnet-lite0" in unknown.json()["error"]
    bad_k = httpx.post(f"{server.url}/predict", params={"top_k": 0}, files={"image": ("c.png", chelsea_png)})
    assert bad_k.status_code == 400 and "top_k" in bad_k.json()["error"]
    bad_name = httpx.post(f"{server.url}/predict/..%2e", files={"image": ("c.png", chelsea_png)})
    assert bad_name.status_code in (400, 404) and "error" in bad_name.json()


def test_server_keeps_serving_after_bad_input(server: LiveServer, chelsea_png: bytes) -> None:
    for payload in (b"", b"garbage", encode(np.zeros((1, 1, 3), dtype=np.uint8))[:10]):
        assert httpx.post(f"{server.url}/predict", files={"image": ("x", payload)}).status_code < 500
    ok = httpx.post(f"{server.url}/predict", files={"image": ("c.png", chelsea_png)})
    assert ok.status_code == 200 and set(labels(ok)) & CAT_LABELS


def test_openapi_documents_both_faces(server: LiveServer) -> None:
    """The infer endpoints are served by plain routes ahead of FastAPI's, but stay in the docs exactly once."""
    schema = httpx.get(f"{server.url}/openapi.json").json()
    paths = schema["paths"]
    for path in ("/predict", "/predict/{model}", "/v2/models/{model}/infer",
                 "/v2/models/{model}/versions/{version}/infer", "/v2/models/{model}/config"):
        assert path in paths, f"{path} missing from the OpenAPI schema"
    assert list(paths["/v2/models/{model}/infer"]) == ["post"]
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


# -- a client that leaves ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patient_server(default_repository: Path) -> Iterator[LiveServer]:
    """A lone request waits 3 s for company, so a client can leave while it is still queued."""
    from inferd.serve import ServerSettings
    from inferd.serve.settings import ServingSettings as ServingConfig

    settings = ServerSettings(repository=default_repository, default_model="efficientnet-lite0",
                              models=ServingConfig(max_batch_size=8, max_queue_delay_ms=3000))
    with LiveServer(settings) as live:
        yield live


def _queue_depth(server: LiveServer) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("inferd_queue_depth{") and 'model="efficientnet-lite0"' in line)


def test_a_client_that_leaves_is_dropped_from_the_queue(patient_server: LiveServer) -> None:
    tensor = np.zeros((1, 3, 224, 224), dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(tensor)}}]}).encode()
    head = (f"POST /v2/models/efficientnet-lite0/infer HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {len(header) + len(tensor)}\r\nInference-Header-Content-Length: {len(header)}\r\n\r\n")
    executed_before = httpx.get(f"{patient_server.url}/v2/models/efficientnet-lite0/stats").json()[
        "model_stats"][0]["execution_count"]
    with socket.create_connection(("127.0.0.1", patient_server.port)) as connection:
        connection.sendall(head.encode() + header + tensor)
        deadline = time.monotonic() + 3
        while _queue_depth(patient_server) < 1:
            assert time.monotonic() < deadline, "the request never queued"
            time.sleep(0.02)
    left = time.monotonic()
    while _queue_depth(patient_server) > 0:
        assert time.monotonic() - left < 2, "the request stayed queued after its client left"
        time.sleep(0.02)
    time.sleep(3)  # past the queue delay: a request still queued would have run by now
    stats = httpx.get(f"{patient_server.url}/v2/models/efficientnet-lite0/stats").json()["model_stats"][0]
    assert stats["execution_count"] == executed_before
