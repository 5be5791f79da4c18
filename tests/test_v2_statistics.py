"""Triton's statistics extension on a real server: every face counts each successful inference once in each phase.

perf_analyzer reads `/v2/models/M/stats` before and after a measurement window
and aborts unless the compute-input, compute-infer and compute-output counts
moved together; dashboards divide each phase's time by its count. So for every
way a request reaches a model, the differences of two reads must show one
success, one queue entry and one of each compute phase per request, each phase
with time in it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm

from tests.conftest import LiveServer

IMAGE_MODEL, TEXT_MODEL = "efficientnet-lite0", "minilm-l6"
LOGITS_BYTES = 1000 * 4


@pytest.fixture(scope="module")
def live(default_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    settings = ServerSettings(repository=default_repository, grpc_port=0, allow_shared_memory=True)
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(url=live.url.removeprefix("http://"), network_timeout=60,
                                             concurrency=8)


@pytest.fixture(scope="module")
def grpc(live: LiveServer) -> triton_grpc.InferenceServerClient:
    return triton_grpc.InferenceServerClient(f"127.0.0.1:{live.app.state.grpc_port}")


def _stats(live: LiveServer, model: str) -> dict[str, Any]:
    (stats,) = httpx.get(f"{live.url}/v2/models/{model}/stats", timeout=30).json()["model_stats"]
    return dict(stats)


def _image(module: Any, tensor: np.ndarray, binary: bool = True) -> Any:
    image = module.InferInput("image", list(tensor.shape), "FP32")
    if module is triton_http:
        image.set_data_from_numpy(tensor, binary_data=binary)
    else:
        image.set_data_from_numpy(tensor)
    return image


def _texts(module: Any, texts: list[str]) -> Any:
    text = module.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return text


def _shared_memory(http: triton_http.InferenceServerClient, tensor: np.ndarray) -> None:
    """Input and output both in one registered region, so the body carries neither."""
    size = tensor.nbytes
    key = f"/inferd-stats-{os.getpid()}"
    region = shm.create_shared_memory_region("stats", key, size + LOGITS_BYTES)
    try:
        shm.set_shared_memory_region(region, [tensor])
        http.register_system_shared_memory("stats", key, size + LOGITS_BYTES)
        image = triton_http.InferInput("image", list(tensor.shape), "FP32")
        image.set_shared_memory("stats", size)
        logits = triton_http.InferRequestedOutput("logits")
        logits.set_shared_memory("stats", LOGITS_BYTES, offset=size)
        http.infer(IMAGE_MODEL, [image], outputs=[logits])
    finally:
        http.unregister_system_shared_memory("stats")
        shm.destroy_shared_memory_region(region)


Face = Callable[[LiveServer, triton_http.InferenceServerClient, triton_grpc.InferenceServerClient, np.ndarray, bytes],
                object]

# name: (model, requests sent, how)
FACES: dict[str, tuple[str, int, Face]] = {
    "v2 http binary": (IMAGE_MODEL, 2, lambda live, http, grpc, tensor, png: [
        http.infer(IMAGE_MODEL, [_image(triton_http, tensor)]) for _ in range(2)]),
    "v2 http json": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: http.infer(
        IMAGE_MODEL, [_image(triton_http, tensor, binary=False)],
        outputs=[triton_http.InferRequestedOutput("logits", binary_data=False)])),
    "v2 http encoded images": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: http.infer(
        IMAGE_MODEL, [_bytes_input(triton_http, "image", [png, png])])),
    "v2 http classification": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: http.infer(
        IMAGE_MODEL, [_image(triton_http, tensor)], outputs=[triton_http.InferRequestedOutput("logits", class_count=3)])),
    "v2 http shared memory": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: _shared_memory(http, tensor)),
    "v2 grpc": (IMAGE_MODEL, 2, lambda live, http, grpc, tensor, png: [
        grpc.infer(IMAGE_MODEL, [_image(triton_grpc, tensor)]) for _ in range(2)]),
    "rest predict": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: httpx.post(
        f"{live.url}/predict/{IMAGE_MODEL}", files={"image": ("cat.png", png)}, timeout=60).raise_for_status()),
    "rest predict batch": (IMAGE_MODEL, 1, lambda live, http, grpc, tensor, png: httpx.post(
        f"{live.url}/predict/{IMAGE_MODEL}/batch", files=[("images", ("a.png", png)), ("images", ("b.png", png))],
        timeout=60).raise_for_status()),
    "rest embed": (TEXT_MODEL, 1, lambda live, http, grpc, tensor, png: httpx.post(
        f"{live.url}/embed/{TEXT_MODEL}", json=["a cat", "a kitten"], timeout=60).raise_for_status()),
    "v2 http text": (TEXT_MODEL, 1, lambda live, http, grpc, tensor, png: http.infer(
        TEXT_MODEL, [_texts(triton_http, ["a cat", "stock market"])])),
    "v2 grpc text": (TEXT_MODEL, 1, lambda live, http, grpc, tensor, png: grpc.infer(
        TEXT_MODEL, [_texts(triton_grpc, ["a cat"])])),
}


def _bytes_input(module: Any, name: str, items: list[bytes]) -> Any:
    given = module.InferInput(name, [len(items)], "BYTES")
    given.set_data_from_numpy(np.array(items, dtype=object))
    return given


def _difference(before: dict[str, Any], after: dict[str, Any], phase: str) -> tuple[int, int]:
    b, a = before["inference_stats"][phase], after["inference_stats"][phase]
    return a["count"] - b["count"], a["ns"] - b["ns"]


@pytest.mark.parametrize("face", list(FACES))
def test_every_face_counts_each_phase_once_per_request(
    face: str, live: LiveServer, http: triton_http.InferenceServerClient, grpc: triton_grpc.InferenceServerClient,
    chelsea_tensor: np.ndarray, chelsea_png: bytes,
) -> None:
    model, requests, send = FACES[face]
    before = _stats(live, model)
    send(live, http, grpc, chelsea_tensor, chelsea_png)
    after = _stats(live, model)
    assert _difference(before, after, "fail")[0] == 0
    assert _difference(before, after, "success")[0] == requests
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        count, ns = _difference(before, after, phase)
        assert count == requests, phase
        assert ns > 0, phase
    success_ns = _difference(before, after, "success")[1]
    compute_ns = sum(_difference(before, after, p)[1] for p in ("compute_input", "compute_infer", "compute_output"))
    assert 0 < compute_ns <= success_ns  # a request's phases happen within its own duration


def test_batched_requests_keep_the_counts_together(
    live: LiveServer, http: triton_http.InferenceServerClient, chelsea_tensor: np.ndarray
) -> None:
    """Concurrent requests share batches: each request counts its batch's compute, each batch size counts its
    executions, and every read in between shows equal compute counts (what perf_analyzer checks)."""
    before = _stats(live, IMAGE_MODEL)
    sent = [http.async_infer(IMAGE_MODEL, [_image(triton_http, chelsea_tensor)]) for _ in range(24)]
    reads = [_stats(live, IMAGE_MODEL) for _ in range(10)]
    for request in sent:
        request.get_result()
    after = _stats(live, IMAGE_MODEL)
    for read in [*reads, after]:
        counts = {read["inference_stats"][p]["count"] for p in ("success", "queue", "compute_input",
                                                                 "compute_infer", "compute_output")}
        assert len(counts) == 1, read["inference_stats"]
    assert _difference(before, after, "compute_infer")[0] == 24
    assert after["inference_count"] - before["inference_count"] == 24
    executions = after["execution_count"] - before["execution_count"]
    assert 1 <= executions <= 24
    for entry in after["batch_stats"]:
        assert entry["compute_input"]["count"] == entry["compute_infer"]["count"] == entry["compute_output"]["count"]
        assert entry["compute_infer"]["ns"] > 0
    assert sum(e["compute_infer"]["count"] for e in after["batch_stats"]) == after["execution_count"]
    assert sum(e["batch_size"] * e["compute_infer"]["count"] for e in after["batch_stats"]) == after["inference_count"]
