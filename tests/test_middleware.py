"""Middlewares and metrics on a real uvicorn server on loopback, with a tiny app that needs no model."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from starlette.types import Message, Receive, Scope, Send

from inferd.serve.access import UNAUTHORIZED
from inferd.serve.app import install
from inferd.serve.metrics.series import ServerMetrics
from inferd.serve.metrics.triton import CpuUsage
from inferd.serve.middleware.body_limit import BodyLimitMiddleware
from inferd.serve.middleware.encoding import response_encoding
from inferd.serve.phases import Phases
from inferd.serve.stats import ModelStats
from tests.conftest import free_port, samples

KEY = "s3cret-key"
LIMIT = 1000
ORIGIN = "https://ui.example"


def build_app(metrics: ServerMetrics, *, api_key: str | None, cors_origins: list[str] | None,
              log_requests: bool = True, body_timeout_s: float = 60.0) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> dict[str, str]:
        return {"model_name": model, "request_id": request.state.request_id}

    install(app, api_key=api_key, max_body_bytes=LIMIT, cors_origins=cors_origins, metrics=metrics,
            log_requests=log_requests, body_timeout_s=body_timeout_s)
    return app


@dataclass
class Live:
    url: str
    metrics: ServerMetrics


@pytest.fixture(scope="module")
def plain() -> Iterator[Live]:
    yield from _serve(api_key=None, cors_origins=None)


@pytest.fixture(scope="module")
def secured() -> Iterator[Live]:
    yield from _serve(api_key=KEY, cors_origins=[ORIGIN])


@pytest.fixture(scope="module")
def unlogged() -> Iterator[Live]:
    yield from _serve(api_key=None, cors_origins=None, log_requests=False)


@pytest.fixture(scope="module")
def hasty() -> Iterator[Live]:
    yield from _serve(api_key=None, cors_origins=None, body_timeout_s=0.3)


def _serve(*, api_key: str | None, cors_origins: list[str] | None, log_requests: bool = True,
           body_timeout_s: float = 60.0) -> Iterator[Live]:
    """The LiveServer pattern of conftest, for an app of our own."""
    import uvicorn

    metrics = ServerMetrics()
    port = free_port()
    app = build_app(metrics, api_key=api_key, cors_origins=cors_origins, log_requests=log_requests,
                    body_timeout_s=body_timeout_s)
    config = uvicorn.Config(app,
                            host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    yield Live(f"http://127.0.0.1:{port}", metrics)
    server.should_exit = True
    thread.join(timeout=10)


def request_count(metrics: ServerMetrics, **labels: str) -> float:
    return samples(metrics.render()[0].decode(), "inferd_requests_total").get(frozenset(labels.items()), 0.0)


# API key


def test_api_key_is_required_with_json_error(secured: Live) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": KEY}):
        response = httpx.post(f"{secured.url}/echo", content=b"hi", headers=headers)
        assert response.status_code == 401, headers
        assert response.json() == {"error": UNAUTHORIZED}
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"Authorization": f"bearer {KEY}"},
                                     {"X-API-Key": KEY}])
def test_api_key_accepted_in_either_header(secured: Live, headers: dict[str, str]) -> None:
    response = httpx.post(f"{secured.url}/echo", content=b"hi", headers=headers)
    assert response.status_code == 200 and response.content == b"hi"


def test_health_is_open_and_metrics_need_the_key(secured: Live) -> None:
    """/metrics lists models and their traffic: behind the key (or on --metrics-port, see test_drain.py)."""
    assert httpx.get(f"{secured.url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{secured.url}/metrics").status_code == 401
    scraped = httpx.get(f"{secured.url}/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert scraped.status_code == 200 and "inferd_requests_total" in scraped.text


def test_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        build_app(ServerMetrics(), api_key="", cors_origins=None).build_middleware_stack()


# Body limit


def test_body_over_content_length_limit(plain: Live) -> None:
    response = httpx.post(f"{plain.url}/echo", content=b"x" * (LIMIT * 5))
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is {LIMIT * 5} bytes; the limit is {LIMIT} bytes (--max-body-bytes)"}
    assert httpx.post(f"{plain.url}/echo", content=b"x" * LIMIT).content == b"x" * LIMIT


def test_chunked_body_over_limit(plain: Live) -> None:
    def chunks(count: int) -> Iterator[bytes]:
        for _ in range(count):
            yield b"y" * 300

    response = httpx.post(f"{plain.url}/echo", content=chunks(10))
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    error = response.json()["error"]  # how many bytes arrived before the check depends on how the server reads
    assert re.fullmatch(rf"request body is at least \d+ bytes; the limit is {LIMIT} bytes \(--max-body-bytes\)", error)
    assert httpx.post(f"{plain.url}/echo", content=chunks(3)).content == b"y" * 900


def test_invalid_content_length_on_the_wire(plain: Live) -> None:
    port = int(plain.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello")
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert httpx.get(f"{plain.url}/health").status_code == 200


def test_a_stalled_body_is_a_408_and_the_connection_closes(hasty: Live) -> None:
    """A client that stops mid-body (a slowloris) loses its connection instead of holding it for good."""
    port = int(hasty.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
        started = time.monotonic()
        answer = b""
        while chunk := connection.recv(4096):  # until the server closes the connection
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ") and b"connection: close" in head.lower()
    assert json.loads(body) == {"error": "the request body stalled: nothing arrived for 0.3 s after 40 bytes "
                                         "(--body-timeout); send the whole body without pausing"}
    assert 0.3 <= waited < 5
    # a body that keeps moving, however slowly, is not a stall; and the server still serves
    def trickle() -> Iterator[bytes]:
        for _ in range(4):
            time.sleep(0.15)
            yield b"z" * 10

    assert httpx.post(f"{hasty.url}/echo", content=trickle()).content == b"z" * 40
    assert httpx.get(f"{hasty.url}/health").status_code == 200


async def test_waiting_for_a_disconnect_after_the_body_never_times_out() -> None:
    """The disconnect watcher reads past the body while a request queues: that wait is not a stall."""
    waited: list[Message] = []

    async def reads_then_waits(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass
        waited.append(await receive())  # the queue wait: long past the body timeout, then the client leaves
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    messages = [{"type": "http.request", "body": b"abc", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.2)
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"3")]}
    await BodyLimitMiddleware(reads_then_waits, LIMIT, body_timeout_s=0.05)(scope, receive, send)
    assert waited == [{"type": "http.disconnect"}] and sent[0]["status"] == 200


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_stall() -> None:
    """Server shutdown cancels request tasks mid-read: that must stay a cancellation, not become a 408."""
    sent: list[Message] = []

    async def never() -> Message:
        message: Message = await asyncio.get_running_loop().create_future()  # nothing ever arrives
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"3")]}
    task = asyncio.ensure_future(BodyLimitMiddleware(reading_app, LIMIT, body_timeout_s=30)(scope, never, send))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent == []


async def call(app: BodyLimitMiddleware, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> list[Message]:
    """Drive the middleware directly: servers reject some malformed requests before any app sees them."""
    scope: Scope = {"type": "http", "method": "POST", "path": "/echo", "headers": headers}
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"read"})


async def test_invalid_content_length_is_a_json_400() -> None:
    sent = await call(BodyLimitMiddleware(reading_app, LIMIT), [(b"content-length", b"12abc")], [b""])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"]) == {"error": "Content-Length must be a non-negative integer, got '12abc'"}


async def test_no_second_response_once_the_app_started_one() -> None:
    async def streams_then_reads(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"early", "more_body": True})
        while (await receive()).get("more_body"):
            pass

    sent = await call(BodyLimitMiddleware(streams_then_reads, LIMIT), [], [b"z" * 600] * 3)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


async def test_app_answer_to_a_cut_body_gives_way_to_413() -> None:
    async def answers_400_on_error(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await reading_app(scope, receive, send)
        except Exception:
            await send({"type": "http.response.start", "status": 400, "headers": []})
            await send({"type": "http.response.body", "body": b"broken body"})

    sent = await call(BodyLimitMiddleware(answers_400_on_error, LIMIT), [], [b"z" * 600] * 3)
    assert [m.get("status") for m in sent] == [413, None]


# Request id and access log


def test_request_id_echoed_or_generated(plain: Live) -> None:
    given = httpx.post(f"{plain.url}/v2/models/m/infer", headers={"X-Request-ID": "abc-123"})
    assert given.headers["X-Request-ID"] == "abc-123" and given.json()["request_id"] == "abc-123"
    generated_ids = set()
    for headers in ({}, {}, {"X-Request-ID": "forged\tline " + "x" * 200}):
        generated = httpx.post(f"{plain.url}/v2/models/m/infer", headers=headers)
        request_id = generated.headers["X-Request-ID"]
        assert len(request_id) == 32 and int(request_id, 16) >= 0
        assert generated.json()["request_id"] == request_id
        generated_ids.add(request_id)
    assert len(generated_ids) == 3


def test_access_log_line_per_request(plain: Live, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="inferd.access")
    httpx.post(f"{plain.url}/v2/models/resnet/infer", content=b"{}", headers={"X-Request-ID": "log-me"})
    deadline = time.monotonic() + 5  # the server logs after it answered, on its own thread
    while not (lines := [json.loads(r.getMessage()) for r in caplog.records if r.name == "inferd.access"
                         and "log-me" in r.getMessage()]):
        assert time.monotonic() < deadline, "no access log line"
        time.sleep(0.01)
    (line,) = lines
    assert line["request_id"] == "log-me" and line["method"] == "POST" and line["path"] == "/v2/models/resnet/infer"
    assert line["status"] == 200 and line["model"] == "resnet" and line["bytes_in"] == 2 and line["client"] == "127.0.0.1"
    assert line["duration_ms"] > 0 and line["bytes_out"] > 0 and line["ts"].endswith("+00:00")


def test_access_log_can_be_turned_off(unlogged: Live, caplog: pytest.LogCaptureFixture) -> None:
    """--no-access-log: no line, while requests are still counted in the metrics."""
    caplog.set_level(logging.INFO, logger="inferd.access")
    for request_id in ("quiet-1", "quiet-2"):
        response = httpx.post(f"{unlogged.url}/echo", content=b"{}", headers={"X-Request-ID": request_id})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id
    # One event loop serves both in turn: once the second is counted, the first has finished all it would log.
    deadline = time.monotonic() + 5
    while request_count(unlogged.metrics, model="", version="", route="/echo", status="200") < 2:
        assert time.monotonic() < deadline, "the requests were never counted"
        time.sleep(0.01)
    assert not [r for r in caplog.records if r.name == "inferd.access"]


# CORS


def test_cors_only_when_configured(secured: Live, plain: Live) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{secured.url}/echo", headers=preflight)
    assert allowed.status_code == 200 and allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    refused = httpx.post(f"{secured.url}/echo", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-ID" in refused.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Origin" not in httpx.get(f"{plain.url}/health", headers={"Origin": ORIGIN}).headers
    assert httpx.options(f"{plain.url}/echo", headers=preflight).status_code == 405


# Metrics


def test_metrics_endpoint_counts_requests_by_route(plain: Live, secured: Live) -> None:
    plain.metrics.track_model("resnet", "1", load_seconds=0.5, queue_depth=lambda: 0, in_flight=lambda: 0, stats=ModelStats())
    try:
        httpx.post(f"{plain.url}/v2/models/resnet/infer")
        httpx.post(f"{plain.url}/v2/models/made-up/infer")
        httpx.get(f"{plain.url}/no/such/path")
        httpx.post(f"{secured.url}/echo")
        response = httpx.get(f"{plain.url}/metrics")
    finally:
        plain.metrics.forget_model("resnet", "1")
    assert response.headers["content-type"].startswith("text/plain")
    for name in ("inferd_requests_total", "inferd_request_duration_seconds_bucket", "inferd_queue_duration_seconds",
                 "inferd_compute_duration_seconds", "inferd_batch_size", "inferd_models_loaded",
                 "inferd_process_resident_memory_bytes", "process_resident_memory_bytes", "python_info"):
        assert name in response.text
    requests = samples(response.text, "inferd_requests_total")
    infer = "/v2/models/{model}/infer"
    assert requests[frozenset({"model": "resnet", "version": "", "route": infer, "status": "200"}.items())] >= 1
    assert requests[frozenset({"model": "", "version": "", "route": infer, "status": "200"}.items())] >= 1
    assert requests[frozenset({"model": "", "version": "", "route": "unmatched", "status": "404"}.items())] >= 1
    assert request_count(secured.metrics, model="", version="", route="/echo", status="401") >= 1
    durations = samples(response.text, "inferd_request_duration_seconds_count")
    assert durations[frozenset({"model": "resnet", "version": ""}.items())] >= 1


def test_batch_observer_fills_histograms() -> None:
    metrics = ServerMetrics()
    observer = metrics.observer_for("resnet", "2")
    observer.on_dequeued(0.002)
    observer.on_dequeued(0.004)
    observer.on_batch(rows=6, requests=2, phases=Phases(input_s=0.001, infer_s=0.01, output_s=0.002))
    text = metrics.render()[0].decode()
    labels = frozenset({"model": "resnet", "version": "2"}.items())
    assert samples(text, "inferd_batch_size_count")[labels] == 1 and samples(text, "inferd_batch_size_sum")[labels] == 6
    assert samples(text, "inferd_compute_duration_seconds_count")[labels] == 2
    assert samples(text, "inferd_queue_duration_seconds_sum")[labels] == pytest.approx(0.006)
    bucket_8 = frozenset({"model": "resnet", "version": "2", "le": "8.0"}.items())
    assert samples(text, "inferd_batch_size_bucket")[bucket_8] == 1


def test_tracked_model_gauges_appear_and_disappear() -> None:
    metrics = ServerMetrics()
    depth = [3]
    metrics.track_model("resnet", "1", load_seconds=1.5, queue_depth=lambda: depth[0], in_flight=lambda: 4, stats=ModelStats())
    metrics.track_model("resnet", "2", load_seconds=2.5, queue_depth=lambda: 1, in_flight=lambda: 1, stats=ModelStats())
    metrics.track_model("closing", "1", load_seconds=1.0, queue_depth=lambda: 1 // 0, in_flight=lambda: 0, stats=ModelStats())
    depth[0] = 5
    text = metrics.render()[0].decode()
    resnet = frozenset({"model": "resnet"}.items())
    assert samples(text, "inferd_queue_depth") == {resnet: 6}  # the failing callback is left out, not fatal
    assert samples(text, "inferd_requests_in_flight")[resnet] == 5
    assert samples(text, "inferd_model_load_seconds")[frozenset({"model": "resnet", "version": "2"}.items())] == 2.5
    assert samples(text, "inferd_models_loaded") == {frozenset(): 3}
    assert samples(text, "inferd_process_resident_memory_bytes")[frozenset()] > 1e6
    for version in ("1", "2"):
        metrics.forget_model("resnet", version)
    metrics.forget_model("closing", "1")
    text = metrics.render()[0].decode()
    assert samples(text, "inferd_queue_depth") == {} and samples(text, "inferd_model_load_seconds") == {}
    assert samples(text, "inferd_models_loaded") == {frozenset(): 0}


def test_unknown_models_do_not_grow_labels() -> None:
    metrics = ServerMetrics()
    metrics.track_model("resnet", "1", load_seconds=1.0, queue_depth=lambda: 0, in_flight=lambda: 0, stats=ModelStats())
    for name, version in (("resnet", "1"), ("resnet", "9"), ("guess-1", ""), ("guess-2", "1")):
        metrics.observe_request(name, version, "/predict/{model}", 200, 0.01)
    assert request_count(metrics, model="resnet", version="1", route="/predict/{model}", status="200") == 1
    assert request_count(metrics, model="resnet", version="", route="/predict/{model}", status="200") == 1
    assert request_count(metrics, model="", version="", route="/predict/{model}", status="200") == 2



def test_triton_metric_names_follow_the_statistics() -> None:
    metrics, stats = ServerMetrics(), ModelStats()
    batch = Phases(input_s=0.001, infer_s=0.01, output_s=0.002)
    stats.on_batch(rows=6, requests=2, phases=batch)
    for queue_s, seconds in ((0.002, 0.02), (0.004, 0.03)):
        request = Phases(input_s=0.003)  # its own decoding, then its share of the batch
        request.add_batch(batch, queue_s)
        stats.on_success(seconds, request)
    stats.on_failure(0.001)
    metrics.track_model("resnet", "2", load_seconds=1.0, queue_depth=lambda: 3, in_flight=lambda: 3, stats=stats)
    text = metrics.render()[0].decode()
    labels = frozenset({"model": "resnet", "version": "2"}.items())
    expected = {
        "nv_inference_request_success": 2, "nv_inference_request_failure": 1, "nv_inference_count": 6,
        "nv_inference_exec_count": 1, "nv_inference_request_duration_us": 50_000, "nv_inference_queue_duration_us": 6000,
        "nv_inference_compute_infer_duration_us": 20_000,  # the batch's 10 ms once per request it served, as Triton counts
        "nv_inference_compute_input_duration_us": 8000, "nv_inference_compute_output_duration_us": 4000,
        "nv_inference_pending_request_count": 3,
    }
    for name, value in expected.items():
        assert samples(text, name) == {labels: pytest.approx(value)}, name
    metrics.forget_model("resnet", "2")
    assert samples(metrics.render()[0].decode(), "nv_inference_request_success") == {}


def test_triton_cpu_gauges_read_proc(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 50 0 50 350 50 0 0 0 0 0\n")
    (tmp_path / "meminfo").write_text("MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\n")
    cpu = CpuUsage(tmp_path)
    (tmp_path / "stat").write_text("cpu  250 0 150 800 100 0 0 0 0 0\n")  # 200 busy jiffies of 300 since the last read
    gauges = {family.name: family.samples[0].value for family in cpu.families()}
    assert gauges == {"nv_cpu_utilization": pytest.approx(2 / 3), "nv_cpu_memory_total_bytes": 1000 * 1024,
                      "nv_cpu_memory_used_bytes": 600 * 1024}
    assert list(CpuUsage(tmp_path / "missing").families()) == []  # no /proc: left out, not invented
    live = {family.name: family.samples[0].value for family in CpuUsage().families()}
    if live:  # Linux
        assert 0 <= live["nv_cpu_utilization"] <= 1
        assert 0 < live["nv_cpu_memory_used_bytes"] < live["nv_cpu_memory_total_bytes"]


@pytest.mark.parametrize(("accept", "chosen"), [
    ("gzip, deflate, br", "gzip"), ("deflate", "deflate"), ("gzip;q=0, deflate;q=0.5", "deflate"), ("*", "gzip"),
    ("*, gzip;q=0", "deflate"), ("br, zstd", None), ("identity", None), ("gzip;q=soon", None), ("", None),
])
def test_response_encoding_follows_accept_encoding(accept: str, chosen: str | None) -> None:
    assert response_encoding(accept) == chosen


def test_head_wherever_get_is_served(plain: Live) -> None:
    """Load balancers' health checks may use HEAD: the GET answer's status and headers, without the body."""
    got, head = httpx.get(f"{plain.url}/health"), httpx.head(f"{plain.url}/health")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert httpx.head(f"{plain.url}/echo").status_code == 405  # POST only
