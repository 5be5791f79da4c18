"""Triton's system shared-memory extension, driven by the real tritonclient and its shared-memory utilities."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

from tests.conftest import CAT_LABELS, LiveServer, top_label
from tests.test_v2_tritonclient import MODEL

LOGITS_BYTES = 1000 * 4
BODY_LIMIT = 1024 * 1024  # one 600 KB image fits, two do not


@pytest.fixture(scope="module")
def shm_server(default_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    settings = ServerSettings(repository=default_repository, allow_shared_memory=True, max_body_bytes=BODY_LIMIT)
    with LiveServer(settings) as live:
        yield live


@pytest.fixture()
def client(shm_server: LiveServer) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=shm_server.url.removeprefix("http://"), network_timeout=60)
    yield client
    client.unregister_system_shared_memory()


@pytest.fixture()
def regions() -> Iterator[dict[str, Any]]:
    """Shared-memory objects created like a Triton client does; unlinked after the test."""
    made: dict[str, Any] = {}

    def make(name: str, byte_size: int) -> tuple[Any, str]:
        key = f"/inferd-test-{os.getpid()}-{name}"
        made[name] = shm.create_shared_memory_region(name, key, byte_size)
        return made[name], key

    yield {"make": make}
    for handle in made.values():
        shm.destroy_shared_memory_region(handle)


def test_server_lists_the_extension_only_when_allowed(client: triton.InferenceServerClient,
                                                        server: LiveServer) -> None:
    assert "system_shared_memory" in client.get_server_metadata()["extensions"]
    assert "system_shared_memory" not in httpx.get(f"{server.url}/v2").json()["extensions"]


def test_infer_with_input_and_output_in_one_region(client: triton.InferenceServerClient,
                                                   regions: dict[str, Any], chelsea_tensor: np.ndarray) -> None:
    """Input at offset 64 and logits after it, in one region: the answer equals the binary-body answer."""
    offset, size = 64, chelsea_tensor.nbytes
    handle, key = regions["make"]("io", offset + size + LOGITS_BYTES)
    shm.set_shared_memory_region(handle, [chelsea_tensor], offset=offset)
    client.register_system_shared_memory("io", key, offset + size + LOGITS_BYTES)

    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_shared_memory("io", size, offset=offset)
    logits_out = triton.InferRequestedOutput("logits")
    logits_out.set_shared_memory("io", LOGITS_BYTES, offset=offset + size)
    result = client.infer(MODEL, [image], outputs=[logits_out])

    output = result.get_output("logits")
    assert "data" not in output and output["shape"] == [1, 1000]  # the data went to shared memory, not the body
    assert output["parameters"] == {"shared_memory_region": "io", "shared_memory_byte_size": LOGITS_BYTES,
                                    "shared_memory_offset": offset + size}
    logits = shm.get_contents_as_numpy(handle, np.float32, output["shape"], offset=offset + size)
    assert top_label(logits[0]) in CAT_LABELS

    body_image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    body_image.set_data_from_numpy(chelsea_tensor)
    np.testing.assert_allclose(logits, client.infer(MODEL, [body_image]).as_numpy("logits"), rtol=1e-5, atol=1e-5)


def test_jpeg_bytes_through_shared_memory(client: triton.InferenceServerClient, regions: dict[str, Any],
                                          coffee_jpeg: bytes, chelsea_png: bytes) -> None:
    serialized = serialize_byte_tensor(np.array([coffee_jpeg, chelsea_png], dtype=object))
    size = len(serialized.item())  # length-prefixed elements, as in the binary part
    handle, key = regions["make"]("photos", size)
    shm.set_shared_memory_region(handle, [serialized])
    client.register_system_shared_memory("photos", key, size)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_shared_memory("photos", size)
    logits = client.infer(MODEL, [image]).as_numpy("logits")
    assert top_label(logits[0]) in {"espresso", "cup"} and top_label(logits[1]) in CAT_LABELS


def test_status_and_unregister(client: triton.InferenceServerClient, regions: dict[str, Any]) -> None:
    _, key_a = regions["make"]("a", 4096)
    _, key_b = regions["make"]("b", 8192)
    client.register_system_shared_memory("a", key_a, 1024, offset=512)
    client.register_system_shared_memory("b", key_b, 8192)
    status = {r["name"]: r for r in client.get_system_shared_memory_status()}
    assert status["a"] == {"name": "a", "key": key_a, "offset": 512, "byte_size": 1024}
    assert status["b"]["byte_size"] == 8192
    assert [r["name"] for r in client.get_system_shared_memory_status("b")] == ["b"]
    client.unregister_system_shared_memory("a")
    client.unregister_system_shared_memory("a")  # unregistering twice is clean-up, not an error
    assert [r["name"] for r in client.get_system_shared_memory_status()] == ["b"]
    client.unregister_system_shared_memory()
    assert client.get_system_shared_memory_status() == []


def _error(call: Any) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() and caught.value.status().startswith("4"), caught.value.status()
    return str(caught.value.message())


def test_registration_errors(client: triton.InferenceServerClient, shm_server: LiveServer,
                             regions: dict[str, Any]) -> None:
    _, key = regions["make"]("reg", 1024)
    for body in (b"nope", b'{"key": "/x"}', b'{"key": "/x", "byte_size": -1}'):
        answer = httpx.post(f"{shm_server.url}/v2/systemsharedmemory/region/x/register", content=body)
        assert answer.status_code == 400 and "must be JSON like" in answer.json()["error"], answer.text
    assert "no shared-memory object" in _error(lambda: client.register_system_shared_memory("x", "/no-such", 8))
    assert "not a POSIX shared-memory name" in _error(
        lambda: client.register_system_shared_memory("x", "/../../etc/passwd", 8))
    assert "reaches past its end" in _error(lambda: client.register_system_shared_memory("x", key, 2048))
    assert "reaches past its end" in _error(lambda: client.register_system_shared_memory("x", key, 1000, offset=100))
    client.register_system_shared_memory("reg", key, 1024)
    assert "already registered" in _error(lambda: client.register_system_shared_memory("reg", key, 1024))
    assert "no shared-memory region 'nope'" in _error(lambda: client.get_system_shared_memory_status("nope"))


def _request(url: str, image_params: dict[str, Any], output_params: dict[str, Any] | None = None,
             status: int = 400, rows: int = 1) -> str:
    image: dict[str, Any] = {"name": "image", "shape": [rows, 3, 224, 224], "datatype": "FP32",
                             "parameters": image_params}
    body: dict[str, Any] = {"inputs": [image]}
    if output_params is not None:
        body["outputs"] = [{"name": "logits", "parameters": output_params}]
    response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert response.status_code == status, response.text
    return str(response.json()["error"])


def test_inference_errors_leave_the_server_serving(client: triton.InferenceServerClient, shm_server: LiveServer,
                                                   regions: dict[str, Any], chelsea_tensor: np.ndarray) -> None:
    url, size = shm_server.url, chelsea_tensor.nbytes
    handle, key = regions["make"]("in", 2 * size)  # room for two images, which the body limit refuses
    shm.set_shared_memory_region(handle, [chelsea_tensor])
    client.register_system_shared_memory("in", key, 2 * size)
    good = {"shared_memory_region": "in", "shared_memory_byte_size": size}

    assert "no shared-memory region 'gone'" in _request(url, {**good, "shared_memory_region": "gone"})
    assert "reaches past its end" in _request(url, {**good, "shared_memory_offset": size + 4})
    assert "shared_memory_byte_size is 1024 bytes" in _request(url, {**good, "shared_memory_byte_size": 1024})
    assert "go together" in _request(url, {"shared_memory_region": "in"})
    assert "non-negative integer" in _request(url, {**good, "shared_memory_byte_size": "all"})
    assert "one way only" in _request(url, {**good, "binary_data_size": size})
    two = {**good, "shared_memory_byte_size": 2 * size}
    assert "over the server's limit" in _request(url, two, status=413, rows=2)
    assert "at least 4000 bytes" in _request(
        url, good, {"shared_memory_region": "in", "shared_memory_byte_size": 100})

    shrink = os.open(f"/dev/shm/{key.lstrip('/')}", os.O_RDWR)  # the client shrinks the object under the server
    os.ftruncate(shrink, 1024)
    os.close(shrink)
    assert "shrank" in _request(url, good)

    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)
    assert top_label(client.infer(MODEL, [image]).as_numpy("logits")[0]) in CAT_LABELS
