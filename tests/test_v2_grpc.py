"""The real `tritonclient.grpc` against inferd's gRPC face on loopback: what Triton tooling calls over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.utils.shared_memory as shm
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from inferd.serve.settings import ServingSettings as ServingConfig
from tests.conftest import CAT_LABELS, LiveServer, top_label

MODEL = "efficientnet-lite0"
KEY = "grpc-key"


def _server(repository: Path, **settings: object) -> LiveServer:
    from inferd.serve import ServerSettings

    return LiveServer(ServerSettings(repository=repository, grpc_port=0, allow_shared_memory=True, **settings))


def _client(server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.app.state.grpc_port}")


@pytest.fixture(scope="module")
def grpc_server(default_repository: Path) -> Iterator[LiveServer]:
    with _server(default_repository) as live:
        yield live


@pytest.fixture(scope="module")
def client(grpc_server: LiveServer) -> triton.InferenceServerClient:
    return _client(grpc_server)


def _image(tensor: np.ndarray) -> triton.InferInput:
    image = triton.InferInput("image", list(tensor.shape), "FP32")
    image.set_data_from_numpy(tensor)
    return image


def _error(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value


def _raw_request(tensor: np.ndarray) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=MODEL, raw_input_contents=[tensor.tobytes()])
    request.inputs.add(name="image", datatype="FP32", shape=list(tensor.shape))
    return request


@contextlib.asynccontextmanager
async def _aio_stub(repository: Path, **serving: int) -> AsyncIterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    """grpcio's own asyncio stub on a server of its own, with the serving settings given."""
    with _server(repository, models=ServingConfig(**serving)) as live:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{live.app.state.grpc_port}") as channel:
            yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and not client.is_model_ready("no-such-model")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "inferd" and "system_shared_memory" in server["extensions"]
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "3", "224", "224"]}]
    assert metadata["outputs"][0]["name"] == "logits"


def test_model_config(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size >= 1 and list(config.input[0].dims) == [3, 224, 224]
    assert config.input[0].data_type == 11  # TYPE_FP32
    assert list(config.output[0].dims) == [1000]
    assert config.dynamic_batching.max_queue_delay_microseconds >= 0


def test_infer_raw_tensor_matches_http(client: triton.InferenceServerClient, grpc_server: LiveServer,
                                       chelsea_tensor: np.ndarray) -> None:
    result = client.infer(MODEL, [_image(chelsea_tensor)], request_id="grpc-7",
                          outputs=[triton.InferRequestedOutput("logits")])
    logits = result.as_numpy("logits")
    assert logits.shape == (1, 1000) and top_label(logits[0]) in CAT_LABELS
    assert result.get_response().id == "grpc-7"
    body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(chelsea_tensor.shape),
                        "data": chelsea_tensor.reshape(-1).tolist()}]}
    over_http = httpx.post(f"{grpc_server.url}/v2/models/{MODEL}/infer", json=body, timeout=60).json()
    np.testing.assert_allclose(logits.reshape(-1), over_http["outputs"][0]["data"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_messages(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray, algorithm: str) -> None:
    plain = client.infer(MODEL, [_image(chelsea_tensor)]).as_numpy("logits")
    squeezed = client.infer(MODEL, [_image(chelsea_tensor)], compression_algorithm=algorithm).as_numpy("logits")
    np.testing.assert_array_equal(squeezed, plain)


def test_jpeg_bytes_and_classification(client: triton.InferenceServerClient, coffee_jpeg: bytes,
                                       chelsea_png: bytes) -> None:
    images = triton.InferInput("image", [2], "BYTES")
    images.set_data_from_numpy(np.array([coffee_jpeg, chelsea_png], dtype=object))
    logits = client.infer(MODEL, [images]).as_numpy("logits")
    assert top_label(logits[0]) in {"espresso", "cup"} and top_label(logits[1]) in CAT_LABELS
    ranked = client.infer(MODEL, [images], outputs=[triton.InferRequestedOutput("logits", class_count=3)])
    top = ranked.as_numpy("logits")
    assert top.shape == (2, 3) and top[1][0].decode().split(":")[2] in CAT_LABELS


def test_text_model(client: triton.InferenceServerClient) -> None:
    texts = triton.InferInput("text", [2], "BYTES")
    texts.set_data_from_numpy(np.array([b"a cat", b"a kitten"], dtype=object))
    embedding = client.infer("minilm-l6", [texts]).as_numpy("embedding")
    assert embedding.shape == (2, 384)
    assert float(embedding[0] @ embedding[1]) / float(np.linalg.norm(embedding[0]) * np.linalg.norm(embedding[1])) > 0.5


def test_repository_and_stats(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray) -> None:
    before = client.get_inference_statistics(MODEL).model_stats[0].inference_count
    client.infer(MODEL, [_image(chelsea_tensor)])
    assert client.get_inference_statistics(MODEL).model_stats[0].inference_count == before + 1
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index[MODEL] == "READY"
    client.unload_model(MODEL)
    assert not client.is_model_ready(MODEL)
    assert _error(lambda: client.infer(MODEL, [_image(chelsea_tensor)])).status() == "StatusCode.NOT_FOUND"
    client.load_model(MODEL)
    assert client.is_model_ready(MODEL)


def test_load_with_a_config_override(client: triton.InferenceServerClient) -> None:
    try:
        client.load_model(MODEL, config=json.dumps({"max_batch_size": 2, "instance_group": [{"count": 2}]}))
        config = client.get_model_config(MODEL).config
        assert config.max_batch_size == 2 and config.instance_group[0].count == 2
        refused = _error(lambda: client.load_model(MODEL, config='{"ensemble_scheduling": {}}'))
        assert refused.status() == "StatusCode.INVALID_ARGUMENT" and "ensemble_scheduling" in refused.message()
    finally:
        client.load_model(MODEL)
    assert client.get_model_config(MODEL).config.max_batch_size == 8


def test_log_settings(client: triton.InferenceServerClient) -> None:
    before = client.get_log_settings(as_json=True)["settings"]
    assert before["log_info"] == {"bool_param": True} and before["log_file"] == {"string_param": ""}
    try:
        after = client.update_log_settings({"log_verbose_level": 2}, as_json=True)["settings"]
        assert after["log_verbose_level"] == {"uint32_param": 2} and after["log_info"] == {"bool_param": True}
        refused = _error(lambda: client.update_log_settings({"log_format": "ISO8601"}))
        assert refused.status() == "StatusCode.INVALID_ARGUMENT" and "log_format stays 'default'" in refused.message()
    finally:
        client.update_log_settings({"log_verbose_level": 0})
    assert client.get_log_settings(as_json=True)["settings"]["log_verbose_level"] == {"uint32_param": 0}


def test_shared_memory(client: triton.InferenceServerClient, chelsea_tensor: np.ndarray) -> None:
    key, size = f"/inferd-grpc-{os.getpid()}", chelsea_tensor.nbytes
    region = shm.create_shared_memory_region("g", key, size + 4000)
    try:
        shm.set_shared_memory_region(region, [chelsea_tensor])
        client.register_system_shared_memory("g", key, size + 4000)
        assert client.get_system_shared_memory_status(as_json=True)["regions"]["g"]["key"] == key
        image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
        image.set_shared_memory("g", size)
        output = triton.InferRequestedOutput("logits")
        output.set_shared_memory("g", 4000, offset=size)
        client.infer(MODEL, [image], outputs=[output])
        logits = shm.get_contents_as_numpy(region, np.float32, [1, 1000], offset=size)
        assert top_label(logits[0]) in CAT_LABELS
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(region)


def test_bad_requests_get_status_codes_with_messages(client: triton.InferenceServerClient) -> None:
    wrong_shape = _error(lambda: client.infer(MODEL, [_image(np.zeros((1, 3, 100, 100), np.float32))]))
    assert wrong_shape.status() == "StatusCode.INVALID_ARGUMENT" and "224" in wrong_shape.message()
    unknown = _error(lambda: client.infer("nope", [_image(np.zeros((1, 3, 224, 224), np.float32))]))
    assert unknown.status() == "StatusCode.NOT_FOUND"
    no_region = triton.InferInput("image", [1, 3, 224, 224], "FP32")
    no_region.set_shared_memory("missing", 602112)
    assert "no shared-memory region 'missing'" in _error(lambda: client.infer(MODEL, [no_region])).message()
    path_name = _error(lambda: client.load_model("../etc"))
    assert path_name.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_ready()


def test_metrics_count_grpc_requests(client: triton.InferenceServerClient, grpc_server: LiveServer,
                                     chelsea_tensor: np.ndarray) -> None:
    client.infer(MODEL, [_image(chelsea_tensor)])
    metrics = httpx.get(f"{grpc_server.url}/metrics").text
    assert 'route="grpc ModelInfer",status="200"' in metrics


def test_api_key(default_repository: Path, chelsea_tensor: np.ndarray) -> None:
    with _server(default_repository, api_key=KEY) as live:
        client = _client(live)
        assert client.is_server_ready()  # health is open, as over HTTP
        refused = _error(lambda: client.infer(MODEL, [_image(chelsea_tensor)]))
        assert refused.status() == "StatusCode.UNAUTHENTICATED" and "API key" in refused.message()
        for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
            logits = client.infer(MODEL, [_image(chelsea_tensor)], headers=headers).as_numpy("logits")
            assert top_label(logits[0]) in CAT_LABELS


def test_standard_health_service_for_probes(default_repository: Path) -> None:
    """Kubernetes gRPC probes and grpc_health_probe call grpc.health.v1 without credentials; a shutdown tells
    watchers NOT_SERVING, then ends their streams instead of holding the drain."""
    live = _server(default_repository, api_key=KEY)
    live.__enter__()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{live.app.state.grpc_port}")
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "inference.GRPCInferenceService"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=name)).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    except BaseException:
        live.__exit__(None, None, None)
        raise
    stopping = threading.Thread(target=live.__exit__, args=(None, None, None))
    started = time.monotonic()
    stopping.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert list(watch) == []  # then the server ends the stream
    stopping.join(timeout=60)
    assert not stopping.is_alive() and time.monotonic() - started < 10  # not the 30 s drain grace
    channel.close()


def test_stream_answers_every_request_and_survives_a_bad_one(client: triton.InferenceServerClient,
                                                              chelsea_tensor: np.ndarray) -> None:
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(MODEL, [_image(chelsea_tensor)], request_id="a")
        client.async_stream_infer(MODEL, [_image(np.zeros((1, 3, 64, 64), np.float32))], request_id="bad")
        client.async_stream_infer(MODEL, [_image(chelsea_tensor)], request_id="b")
        got = [answers.get(timeout=60) for _ in range(3)]
    finally:
        client.stop_stream()
    good = {result.get_response().id: result.as_numpy("logits") for result, error in got if error is None}
    errors = [error for _, error in got if error is not None]
    assert set(good) == {"a", "b"} and all(top_label(logits[0]) in CAT_LABELS for logits in good.values())
    assert len(errors) == 1 and "224" in errors[0].message()  # type: ignore[attr-defined]


async def test_overload_is_unavailable_with_retry_after(default_repository: Path, chelsea_tensor: np.ndarray) -> None:
    """A full queue refuses at once, with the status gRPC clients retry on and when to retry."""


    request = _raw_request(chelsea_tensor)
    async with _aio_stub(default_repository, max_batch_size=1, max_queue_size=1) as stub:
        answers = await asyncio.gather(*(stub.ModelInfer(request) for _ in range(12)), return_exceptions=True)
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    served = [a for a in answers if isinstance(a, service_pb2.ModelInferResponse)]
    assert served and refused and len(served) + len(refused) == 12, answers
    for error in refused:
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "max_queue_size" in (error.details() or "")
        assert int(dict(error.trailing_metadata() or ())["retry-after"]) >= 1


def test_corrupt_messages_are_invalid_argument(grpc_server: LiveServer, client: triton.InferenceServerClient) -> None:

    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.app.state.grpc_port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            infer(b"\x0a\xff\xff\xff\xff\x0f not protobuf", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest message" in caught.value.details()
    cuda = _error(client.get_cuda_shared_memory_status)  # not served here: said so, not crashed
    assert cuda.status() == "StatusCode.UNIMPLEMENTED"
    assert client.is_server_live()


def test_request_ids_come_back_in_trailing_metadata(grpc_server: LiveServer) -> None:

    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.app.state.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        _, given = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest(),
                                                 metadata=(("x-request-id", "trace-41"),))
        _, made = stub.ServerMetadata.with_call(service_pb2.ServerMetadataRequest(),
                                                metadata=(("x-request-id", "bad id\\nforged"),))
    assert dict(given.trailing_metadata())["x-request-id"] == "trace-41"
    generated = dict(made.trailing_metadata())["x-request-id"]
    assert generated != "bad id\\nforged" and len(generated) == 32


def test_typed_contents_and_raw_contents_agree(grpc_server: LiveServer, chelsea_tensor: np.ndarray) -> None:
    """Clients that fill `contents.fp32_contents` instead of raw bytes get the same answer; mixing is refused."""

    typed = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = typed.inputs.add(name="image", datatype="FP32", shape=list(chelsea_tensor.shape))
    tensor.contents.fp32_contents.extend(chelsea_tensor.reshape(-1).tolist())
    raw = _raw_request(chelsea_tensor)
    extra = service_pb2.ModelInferRequest(model_name=MODEL, raw_input_contents=[chelsea_tensor.tobytes()] * 2)
    extra.inputs.add(name="image", datatype="FP32", shape=list(chelsea_tensor.shape))
    half = service_pb2.ModelInferRequest(model_name=MODEL)
    half.inputs.add(name="image", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.app.state.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = [np.frombuffer(stub.ModelInfer(r).raw_output_contents[0], np.float32) for r in (typed, raw)]
        refusals = []
        for bad in (extra, half):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(bad)
            refusals.append(caught.value)
    np.testing.assert_allclose(answers[0], answers[1], rtol=1e-5, atol=1e-5)
    assert top_label(answers[0]) in CAT_LABELS
    assert all(r.code() == grpc.StatusCode.INVALID_ARGUMENT for r in refusals)
    assert "1 more entries" in refusals[0].details() and "raw_input_contents" in refusals[1].details()


async def test_cancelled_calls_leave_the_queue(default_repository: Path, chelsea_tensor: np.ndarray) -> None:
    """Calls a client cancels while they wait are dropped, not run: the model counts only the ones that ran."""


    request, statistics = _raw_request(chelsea_tensor), service_pb2.ModelStatisticsRequest(name=MODEL)
    async with _aio_stub(default_repository, max_batch_size=1, max_queue_size=64) as stub:
        before = (await stub.ModelStatistics(statistics)).model_stats[0].inference_count
        calls = [stub.ModelInfer(request) for _ in range(20)]
        await asyncio.sleep(0.05)  # all sent and queued behind the first
        for call in calls[1:]:
            call.cancel()
        await calls[0]
        await asyncio.sleep(0.5)
        ran = (await stub.ModelStatistics(statistics)).model_stats[0].inference_count - before
    assert 1 <= ran < 10, ran


def test_typed_bytes_contents_and_refusals_that_name_grpc_fields(grpc_server: LiveServer, coffee_jpeg: bytes) -> None:
    """Encoded images in `bytes_contents` are served as tritonclient's raw bytes are; a tensor that does not match
    its shape is refused naming the field the client filled, not HTTP's binary_data_size."""
    typed = service_pb2.ModelInferRequest(model_name=MODEL)
    typed.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(coffee_jpeg)
    miscounted = service_pb2.ModelInferRequest(model_name=MODEL)
    miscounted.inputs.add(name="image", datatype="BYTES", shape=[2]).contents.bytes_contents.append(coffee_jpeg)
    short = _raw_request(np.zeros((1, 3, 224, 223), np.float32))
    short.inputs[0].shape[:] = [1, 3, 224, 224]
    with grpc.insecure_channel(f"127.0.0.1:{grpc_server.app.state.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        logits = np.frombuffer(stub.ModelInfer(typed).raw_output_contents[0], np.float32)
        refusals = []
        for bad in (miscounted, short):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(bad)
            refusals.append(caught.value)
    assert top_label(logits) in {"espresso", "cup"}
    assert all(r.code() == grpc.StatusCode.INVALID_ARGUMENT for r in refusals)
    assert "contents.bytes_contents has 1 elements but shape [2] needs 2" in refusals[0].details()
    assert "its raw_input_contents entry is 599424 bytes but shape [1, 3, 224, 224] of FP32 needs 602112" in (
        refusals[1].details())
