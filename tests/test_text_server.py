"""The text model on a real server on loopback: POST /embed, V2 BYTES through tritonclient, batching, bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

import inferd
from inferd.io import MAX_TEXT_CHARS, embed
from tests.conftest import LiveServer

MODEL = "minilm-l6"
TRIPLE = ["a cat", "a kitten", "stock market"]
HEADER = "Inference-Header-Content-Length"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_embeds_triple(vectors: np.ndarray, local: np.ndarray) -> None:
    """Unit vectors that rank meaning, and the same vectors inferd computes in-process in fp32.

    The server runs at Precision.AUTO, which may be bf16 on CPUs that have it, hence a cosine bound, not equality.
    """
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    cat, kitten, market = vectors
    assert cat @ kitten > cat @ market + 0.3
    assert cosine(vectors, local).min() >= 0.999


@pytest.fixture(scope="module")
def local(text_package: Path) -> np.ndarray:
    return embed(inferd.load(text_package, backend="onnxruntime", precision="fp32"), TRIPLE)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"), connection_timeout=30, network_timeout=60)


# -- POST /embed -----------------------------------------------------------------------------------


def test_embed_list_and_inputs_object(server: LiveServer, local: np.ndarray) -> None:
    response = httpx.post(f"{server.url}/embed/{MODEL}", json=TRIPLE, timeout=60)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == MODEL and body["version"] == "1" and body["dim"] == 384 and body["latency_ms"] > 0
    vectors = np.array(body["embeddings"], dtype=np.float32)
    assert_embeds_triple(vectors, local)
    wrapped = httpx.post(f"{server.url}/embed/{MODEL}", json={"inputs": TRIPLE}, timeout=60).json()
    np.testing.assert_allclose(np.array(wrapped["embeddings"]), vectors, atol=1e-6)


def test_embed_default_text_model(server: LiveServer, local: np.ndarray) -> None:
    """POST /embed picks the repository's text model even though the image model sorts first."""
    response = httpx.post(f"{server.url}/embed", content=json.dumps(["a cat"]), timeout=60)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == MODEL
    assert cosine(np.array(response.json()["embeddings"][0]), local[0]) >= 0.999


def test_models_listing_and_metrics_show_the_text_model(server: LiveServer) -> None:
    models = {m["name"]: m for m in httpx.get(f"{server.url}/models").json()["models"]}
    (text_input,) = models[MODEL]["inputs"]
    assert text_input["kind"] == "text" and text_input["max_length"] == 256 and models[MODEL]["labels"] == 0
    httpx.post(f"{server.url}/embed/{MODEL}", json=["a cat"], timeout=60)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'model="{MODEL}",route="/embed/{{model}}",status="200"' in metrics
    assert f'inferd_queue_depth{{model="{MODEL}"}}' in metrics


def _v2(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"json": {"inputs": inputs}}


def _binary_strings(name: str, items: list[bytes]) -> dict[str, Any]:
    payload = b"".join(len(item).to_bytes(4, "little") + item for item in items)
    header = json.dumps({"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(items)],
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    return {"content": header + payload, "headers": {HEADER: str(len(header))}}


INFER = f"/v2/models/{MODEL}/infer"
BAD_REQUESTS: dict[str, tuple[str, dict[str, Any], int, str]] = {
    "numbers": (f"/embed/{MODEL}", {"json": ["a cat", 3]}, 400, "text 1 is not a string"),
    "nested list": (f"/embed/{MODEL}", {"json": [["a cat"]]}, 400, "not a string"),
    "null text": (f"/embed/{MODEL}", {"json": [None]}, 400, "not a string"),
    "empty list": (f"/embed/{MODEL}", {"json": []}, 400, "no texts"),
    "empty inputs": (f"/embed/{MODEL}", {"json": {"inputs": []}}, 400, "no texts"),
    "too many": (f"/embed/{MODEL}", {"json": ["a cat"] * 257}, 413, "at most 256"),
    "one string": (f"/embed/{MODEL}", {"json": "a cat"}, 400, "list of texts"),
    "a number": (f"/embed/{MODEL}", {"json": 42}, 400, "list of texts"),
    "not json": (f"/embed/{MODEL}", {"content": b"a cat"}, 400, "not valid JSON"),
    "wrong key": (f"/embed/{MODEL}", {"json": {"texts": ["a cat"]}}, 400, "'inputs'"),
    "text too long": (f"/embed/{MODEL}", {"json": ["x" * (MAX_TEXT_CHARS + 1)]}, 413, "characters"),
    "bad timeout": (f"/embed/{MODEL}?timeout_ms=-1", {"json": ["a cat"]}, 400, "timeout_ms"),
    "unknown model": ("/embed/nope", {"json": ["a cat"]}, 404, MODEL),
    "image model": ("/embed/efficientnet-lite0", {"json": ["a cat"]}, 400, "POST /predict/efficientnet-lite0"),
    "text to image route": (f"/predict/{MODEL}", {"files": {"image": ("a.txt", b"a cat")}}, 400, f"POST /embed/{MODEL}"),
    "v2 int64 text": (INFER, _v2([{"name": "text", "datatype": "INT64", "shape": [1], "data": [1]}]), 400, "BYTES"),
    "v2 token tensors": (INFER, _v2([{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [101, 102]}]),
                         400, "takes inputs ['text']"),
    "v2 2-d texts": (INFER, _v2([{"name": "text", "datatype": "BYTES", "shape": [2, 2], "data": ["a", "b", "c", "d"]}]),
                     400, "one string per batch row"),
    "v2 no texts": (INFER, _v2([{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]), 400, "no texts"),
    "v2 invalid utf-8": (INFER, _binary_strings("text", [b"ok", b"\xff\xfe"]), 400, "text 1 is not valid UTF-8"),
    "v2 text to image model": ("/v2/models/efficientnet-lite0/infer", _binary_strings("image", [b"a cat"]), 400,
                               "look like text"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_text_requests_are_4xx(server: LiveServer, case: str) -> None:
    path, request, status, words = BAD_REQUESTS[case]
    response = httpx.post(f"{server.url}{path}", timeout=60, **request)
    assert response.status_code == status, response.text[:300]
    assert words in response.json()["error"], response.json()


def test_still_embedding_after_bad_requests(server: LiveServer, local: np.ndarray) -> None:
    for path, request, _, _ in BAD_REQUESTS.values():
        assert httpx.post(f"{server.url}{path}", timeout=60, **request).status_code < 500
    response = httpx.post(f"{server.url}/embed/{MODEL}", json=TRIPLE, timeout=60)
    assert_embeds_triple(np.array(response.json()["embeddings"], dtype=np.float32), local)


# -- V2 through the real tritonclient --------------------------------------------------------------


def test_v2_metadata_and_config(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}]  # as Triton: [-1] + dims
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    config = client.get_model_config(MODEL)
    assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}]
    assert config["output"] == [{"name": "embedding", "data_type": "TYPE_FP32", "dims": [384]}]
    assert config["max_batch_size"] >= 1 and "dynamic_batching" in config


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_v2_infer_strings(client: triton.InferenceServerClient, local: np.ndarray, binary: bool) -> None:
    texts = triton.InferInput("text", [3], "BYTES")
    texts.set_data_from_numpy(np.array([t.encode() for t in TRIPLE], dtype=object), binary_data=binary)
    result = client.infer(MODEL, [texts], outputs=[triton.InferRequestedOutput("embedding", binary_data=binary)],
                          request_id="texts-1")
    assert result.get_response()["id"] == "texts-1"
    assert_embeds_triple(result.as_numpy("embedding"), local)


def test_v2_one_string_per_row_as_triton_sends_it(client: triton.InferenceServerClient, local: np.ndarray) -> None:
    texts = triton.InferInput("text", [3, 1], "BYTES")
    texts.set_data_from_numpy(np.array([[t.encode()] for t in TRIPLE], dtype=object))
    assert_embeds_triple(client.infer(MODEL, [texts]).as_numpy("embedding"), local)


def test_v2_repository_and_stats(client: triton.InferenceServerClient) -> None:
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in client.get_model_repository_index()
    texts = triton.InferInput("text", [2], "BYTES")
    texts.set_data_from_numpy(np.array([b"a cat", b"a dog"], dtype=object))
    client.infer(MODEL, [texts])
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert stats["name"] == MODEL and stats["inference_count"] >= 2  # rows: texts, not requests
    assert stats["inference_stats"]["success"]["count"] >= 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0


# -- dynamic batching of texts of different lengths ------------------------------------------------


@pytest.fixture(scope="module")
def batching_server(default_repository: Path) -> Iterator[LiveServer]:
    """In fp32, with a queue delay long enough that concurrent requests surely merge; the image model is the default."""
    from inferd.serve import ServerSettings
    from inferd.serve.settings import ServingSettings as ServingConfig

    settings = ServerSettings(repository=default_repository, default_model="efficientnet-lite0",
                              models=ServingConfig(max_batch_size=8, max_queue_delay_ms=300, precision="fp32"))
    with LiveServer(settings) as live:
        yield live


def test_requests_of_different_lengths_share_a_batch(batching_server: LiveServer) -> None:
    requests = [["a cat"], ["a kitten sleeps on the warm windowsill in the afternoon sun"], ["stock market"],
                ["two texts", "in one request, the second one rather longer than the first"], ["ok"]]
    url = f"{batching_server.url}/embed/{MODEL}"
    with ThreadPoolExecutor(len(requests)) as pool:
        merged = list(pool.map(lambda texts: httpx.post(url, json=texts, timeout=60), requests))
    assert all(response.status_code == 200 for response in merged), [r.text for r in merged]
    stats = httpx.get(f"{batching_server.url}/v2/models/{MODEL}/stats").json()["model_stats"][0]
    assert stats["inference_count"] == 6 and stats["execution_count"] < len(requests), stats
    assert max(entry["batch_size"] for entry in stats["batch_stats"]) >= 3
    for texts, response in zip(requests, merged, strict=True):
        alone = httpx.post(url, json=texts, timeout=60).json()["embeddings"]  # padded only to its own texts
        np.testing.assert_allclose(response.json()["embeddings"], alone, atol=1e-5)


def test_default_model_serves_only_the_route_it_fits(batching_server: LiveServer, chelsea_png: bytes) -> None:
    """--default-model names the image model: POST /predict uses it, POST /embed still finds the text model."""
    embedded = httpx.post(f"{batching_server.url}/embed", json=["a cat"], timeout=60)
    assert embedded.status_code == 200 and embedded.json()["model"] == MODEL
    predicted = httpx.post(f"{batching_server.url}/predict", files={"image": ("c.png", chelsea_png)}, timeout=60)
    assert predicted.status_code == 200 and predicted.json()["model"] == "efficientnet-lite0"
