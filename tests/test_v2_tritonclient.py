"""The real `tritonclient[http]` against inferd on loopback: every call Triton tooling makes."""

from __future__ import annotations

import json
import logging
import time

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_LABELS, LiveServer, samples, top_label

MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"), connection_timeout=30, network_timeout=60)


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "inferd" and "binary_tensor_data" in server["extensions"]
    assert client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert metadata["outputs"][0]["name"] == "logits"
    assert not client.is_model_ready("no-such-model")


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] >= 1
    assert config["input"][0]["dims"] == [3, 224, 224] and config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["output"][0]["dims"] == [1000]
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_tensor(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray, binary: bool) -> None:
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor, binary_data=binary)
    output = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer(MODEL, [image], outputs=[output], request_id="req-42")
    logits = result.as_numpy("logits")
    assert logits.shape == (1, 1000)
    assert top_label(logits[0]) in CAT_LABELS
    assert result.get_response()["id"] == "req-42"


def test_infer_jpeg_as_bytes(client: triton.InferenceServerClient, coffee_jpeg: bytes, chelsea_png: bytes) -> None:
    images = np.array([coffee_jpeg, chelsea_png], dtype=object)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(images)
    result = client.infer(MODEL, [image])
    logits = result.as_numpy("logits")
    assert logits.shape == (2, 1000)
    assert top_label(logits[0]) in {"espresso", "cup"}
    assert top_label(logits[1]) in CAT_LABELS


def test_classification_extension(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray) -> None:
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)
    result = client.infer(MODEL, [image], outputs=[triton.InferRequestedOutput("logits", class_count=3)])
    (row,) = result.as_numpy("logits")
    score, index, label = row[0].decode().split(":", 2)
    assert label in CAT_LABELS and 0 < float(score) <= 1 and int(index) >= 0


def test_bad_request_is_reported(client: triton.InferenceServerClient) -> None:
    wrong = triton.InferInput("image", [1, 3, 100, 100], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 3, 100, 100), np.float32))
    with pytest.raises(InferenceServerException, match="axis 2"):
        client.infer(MODEL, [wrong])


def test_repository_unload_load_and_stats(client: triton.InferenceServerClient, server: LiveServer,
                                         chelsea_tensor: np.ndarray) -> None:
    index = client.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
    client.unload_model(MODEL)
    assert not client.is_model_ready(MODEL)
    assert any(row["name"] == MODEL and row["state"] == "UNAVAILABLE" for row in client.get_model_repository_index())
    ready = httpx.post(f"{server.url}/v2/repository/index", json={"ready": True}).json()  # tritonclient has no flag
    assert ready and all(row["state"] == "READY" for row in ready) and MODEL not in {row["name"] for row in ready}
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)
    client.infer(MODEL, [image])
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    assert stats["name"] == MODEL and stats["inference_count"] >= 1
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert stats["inference_stats"]["compute_infer"]["ns"] > 0
    all_stats = client.get_inference_statistics()
    assert any(s["name"] == MODEL for s in all_stats["model_stats"])


def test_triton_metric_names_agree_with_the_statistics(
    client: triton.InferenceServerClient, server: LiveServer, chelsea_tensor: np.ndarray
) -> None:
    """Dashboards built for Triton read its metric names; they must tell what the statistics extension tells."""
    image = triton.InferInput("image", [2, *chelsea_tensor.shape[1:]], "FP32")
    image.set_data_from_numpy(np.concatenate([chelsea_tensor, chelsea_tensor]))
    client.infer(MODEL, [image])
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    text = httpx.get(f"{server.url}/metrics").text
    labels = frozenset({"model": MODEL, "version": stats["version"]}.items())

    def value(name: str) -> float:
        return samples(text, name)[labels]

    inference = stats["inference_stats"]
    assert value("nv_inference_request_success") == inference["success"]["count"] >= 1
    assert value("nv_inference_request_failure") == inference["fail"]["count"]
    assert value("nv_inference_count") == stats["inference_count"] >= value("nv_inference_request_success") + 1
    assert value("nv_inference_exec_count") == stats["execution_count"]
    assert value("nv_inference_compute_infer_duration_us") == pytest.approx(inference["compute_infer"]["ns"] / 1000)
    assert value("nv_inference_queue_duration_us") == pytest.approx(inference["queue"]["ns"] / 1000)
    assert value("nv_inference_request_duration_us") >= value("nv_inference_compute_infer_duration_us") > 0
    assert value("nv_inference_pending_request_count") == 0
    # untyped, so the series keep Triton's names exactly: no "_total" a Triton query would miss
    assert "# TYPE nv_inference_request_success untyped" in text and "nv_inference_request_success_total" not in text


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_answers(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray,
                                         algorithm: str) -> None:
    """tritonclient's request and response compression, as Triton offers them, give the plain answer."""
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)
    plain = client.infer(MODEL, [image]).as_numpy("logits")
    for binary in (True, False):
        result = client.infer(MODEL, [image], outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
                              request_compression_algorithm=algorithm, response_compression_algorithm=algorithm)
        logits = result.as_numpy("logits")
        assert top_label(logits) in CAT_LABELS
        np.testing.assert_allclose(logits, plain, rtol=1e-6)


def test_json_answers_are_compressed_when_accepted(server: LiveServer, chelsea_tensor: np.ndarray) -> None:
    body = {"inputs": [{"name": "image", "shape": list(chelsea_tensor.shape), "datatype": "FP32",
                        "data": chelsea_tensor.ravel().tolist()}]}
    url = f"{server.url}/v2/models/{MODEL}/infer"
    squeezed = httpx.post(url, json=body, headers={"Accept-Encoding": "deflate"}, timeout=60)
    assert squeezed.headers["content-encoding"] == "deflate" and "accept-encoding" in squeezed.headers["vary"].lower()
    assert int(squeezed.headers["content-length"]) < len(squeezed.content) * 0.6  # JSON numbers shrink well
    identity = httpx.post(url, json=body, headers={"Accept-Encoding": "identity"}, timeout=60)
    assert "content-encoding" not in identity.headers and identity.json() == squeezed.json()


def test_load_with_a_config_override(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray) -> None:
    """Triton's Model Analyzer loads a model with an edited config to try batch sizes and instance counts."""
    config = client.get_model_config(MODEL)
    config["max_batch_size"] = 4
    config["dynamic_batching"]["max_queue_delay_microseconds"] = 500
    config["dynamic_batching"]["preferred_batch_size"] = [2, 4]
    config["instance_group"][0]["count"] = 2
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)
    try:
        client.load_model(MODEL, config=json.dumps(config))
        served = client.get_model_config(MODEL)
        assert served["max_batch_size"] == 4 and served["instance_group"][0]["count"] == 2
        assert served["dynamic_batching"]["max_queue_delay_microseconds"] == 500
        assert served["dynamic_batching"]["preferred_batch_size"] == [2, 4]
        assert top_label(client.infer(MODEL, [image]).as_numpy("logits")[0]) in CAT_LABELS
        for bad, complaint in [
            ('{"sequence_batching": {}}', r"\['sequence_batching'\] are not supported"),
            ("{max_batch_size: 2}", "not valid JSON"),
            ('{"name": "resnet"}', "for model 'resnet'"),
            ('{"max_batch_size": -3}', "max_batch_size: Input should be greater than or equal to 1"),
            ('{"dynamic_batching": {"max_queue_delay_microseconds": "soon"}}', "must be a number"),
            ('{"instance_group": {"count": 2}}', "instance_group must be a list"),
        ]:
            with pytest.raises(InferenceServerException, match=complaint):
                client.load_model(MODEL, config=bad)
        with pytest.raises(InferenceServerException, match="put the package in the repository"):
            client.load_model(MODEL, config="{}", files={"file:1/model.onnx": b"\x08\x07"})
        assert client.get_model_config(MODEL)["max_batch_size"] == 4  # a refused load changes nothing
        assert client.is_model_ready(MODEL)
    finally:
        client.load_model(MODEL)
    assert client.get_model_config(MODEL)["max_batch_size"] == 8  # a plain load goes back to the flags


def test_log_settings(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray,
                      caplog: pytest.LogCaptureFixture) -> None:
    """Triton's logging extension: the access lines off and on again while the server runs."""
    image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
    image.set_data_from_numpy(chelsea_tensor)

    def access_lines_after_a_request() -> int:
        caplog.clear()
        client.infer(MODEL, [image])
        deadline = time.monotonic() + 2  # the line is written as the answer leaves
        while time.monotonic() < deadline and not any(r.name == "inferd.access" for r in caplog.records):
            time.sleep(0.02)
        return sum(r.name == "inferd.access" for r in caplog.records)

    settings = client.get_log_settings()
    assert settings == {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
                        "log_verbose_level": 0, "log_format": "default"}
    caplog.set_level(logging.INFO, logger="inferd.access")
    try:
        assert access_lines_after_a_request() == 1
        assert client.update_log_settings({"log_info": False})["log_info"] is False
        assert access_lines_after_a_request() == 0
        for bad, complaint in [({"log_file": "/tmp/x.log"}, "redirect the server's stderr"),
                               ({"log_info": "yes"}, "true or false"), ({"log_verbose_level": -1}, ">= 0"),
                               ({"log_info": True, "colour": 1}, "unknown log setting 'colour'")]:
            with pytest.raises(InferenceServerException, match=complaint):
                client.update_log_settings(bad)
        assert client.get_log_settings()["log_info"] is False  # a refused update changes nothing
    finally:
        client.update_log_settings({"log_info": True})
    assert access_lines_after_a_request() == 1
