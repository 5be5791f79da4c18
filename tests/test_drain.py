"""`inferd serve` as a supervisor and a balancer see it (issue 18): real server processes on loopback ports, a real
AF_UNIX datagram socket as systemd's NOTIFY_SOCKET, SIGTERM, tritonclient and gRPC's health service."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_LABELS, free_port, top_label

MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def image_repository(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image model alone: a server that loads one model starts sooner."""
    repository = tmp_path_factory.mktemp("image-only")
    (repository / MODEL).symlink_to(default_repository / MODEL)
    return repository


def _serve(repository: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "inferd", "serve", str(repository), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def _ready(url: str, process: subprocess.Popen[str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0][-2000:]
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the server did not become ready")


@pytest.fixture
def notices() -> Iterator[tuple[str, list[tuple[float, str]]]]:
    """An abstract AF_UNIX datagram socket, read as systemd reads it, its `@` name for NOTIFY_SOCKET, and what
    arrives on it (when, what)."""
    name = f"@inferd-test-{os.getpid()}-{time.monotonic_ns()}"
    received: list[tuple[float, str]] = []
    done = threading.Event()

    def read(listener: socket.socket) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                received.append((time.monotonic(), listener.recv(4096).decode()))

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name[1:])
        listener.settimeout(0.05)
        reader = threading.Thread(target=read, args=(listener,))
        reader.start()
        yield name, received
        done.set()
        reader.join()


def test_a_busy_http_port_is_refused_before_any_model_loads(image_repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        server = _serve(image_repository, "--port", str(port))
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 2, output[-2000:]
    assert f"cannot listen on 127.0.0.1:{port}" in output and "--port" in output
    assert "loaded" not in output and "serving" not in output and "Traceback" not in output
    assert time.monotonic() - started < 30


def test_more_connections_than_open_files_is_refused(image_repository: Path) -> None:
    """A cap the process cannot reach (accept() would fail first) is a setting that cannot hold."""
    server = subprocess.run(
        [sys.executable, "-m", "inferd", "serve", str(image_repository), "--port", str(free_port()),
         "--max-connections", "1000"], capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    assert server.returncode == 2, server.stderr[-2000:]
    assert "--max-connections 1000 needs 1256 open files but this process may open at most 512" in server.stderr
    assert "loaded" not in server.stdout + server.stderr


def test_sigterm_drains_both_faces_and_tells_systemd(image_repository: Path, chelsea_tensor: np.ndarray,
                                                     notices: tuple[str, list[tuple[float, str]]]) -> None:
    """Requests wait 2.5 s in the batch queue for company, so they are in flight when SIGTERM arrives: they
    finish; readiness goes off and new calls are refused at once; systemd hears READY, WATCHDOG and STOPPING."""
    name, received = notices
    port, grpc_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(image_repository, "--port", str(port), "--grpc-port", str(grpc_port), "--max-queue-delay-ms",
                    "2500", env={"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "400000"})
    try:
        _ready(url, server)
        time.sleep(0.5)
        assert "READY=1\nSTATUS=serving" in [text for _, text in received], received
        ready_at = next(at for at, text in received if text.startswith("READY=1"))
        assert sum(text == "WATCHDOG=1" and at > ready_at for at, text in received) >= 2  # every 0.2 s

        health: list[tuple[float, int]] = []
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        watcher = threading.Thread(target=lambda: health.extend((time.monotonic(), m.status) for m in watch))
        watcher.start()

        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
        image.set_data_from_numpy(chelsea_tensor)
        outcomes: dict[str, object] = {}

        def grpc_call(tag: str) -> None:
            try:
                outcomes[tag] = top_label(client.infer(MODEL, [image]).as_numpy("logits")[0])
            except InferenceServerException as exc:
                outcomes[tag] = exc.status()

        def http_call() -> None:
            body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(chelsea_tensor.shape),
                                "data": chelsea_tensor.ravel().tolist()}]}
            response = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)
            outcomes["http"] = (response.status_code, top_label(np.array(response.json()["outputs"][0]["data"])))
            outcomes["http answered"] = time.monotonic()

        in_flight = [threading.Thread(target=http_call), threading.Thread(target=grpc_call, args=("grpc",))]
        for thread in in_flight:
            thread.start()
        time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        late = [threading.Thread(target=grpc_call, args=(f"late {i}",)) for i in range(3)]
        for thread in late:
            thread.start()
        for thread in late:
            thread.join()
        assert [outcomes[f"late {i}"] for i in range(3)] == ["StatusCode.UNAVAILABLE"] * 3, outcomes
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/v2/health/ready")  # no new connection either
        assert all(thread.is_alive() for thread in in_flight)  # still waiting for batch company
        for thread in in_flight:
            thread.join()
        output, _ = server.communicate(timeout=60)
        watcher.join(timeout=10)
        channel.close()
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode in (0, -signal.SIGTERM), output[-2000:]
    assert outcomes["http"][0] == 200 and outcomes["http"][1] in CAT_LABELS, outcomes  # type: ignore[index]
    assert outcomes["grpc"] in CAT_LABELS, outcomes
    stopping = [at for at, text in received if text.startswith("STOPPING=1")]
    assert stopping and stopping[0] - signalled < 1.0, stopping
    not_serving = [at for at, status in health if status == health_pb2.HealthCheckResponse.NOT_SERVING]
    assert health[0][1] == health_pb2.HealthCheckResponse.SERVING and not_serving, health
    assert not_serving[0] - signalled < 1.0 and not_serving[0] < outcomes["http answered"]  # type: ignore[operator]


def test_a_request_on_a_kept_alive_connection_during_the_drain_is_answered(image_repository: Path,
                                                                        chelsea_tensor: np.ndarray) -> None:
    """A balancer's idle upstream connection, reused just after SIGTERM: the request it carries is answered (with
    `Connection: close`), not met by a reset that nginx, for a POST, turns into a 502."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(image_repository, "--port", str(port), "--keep-alive-timeout", "3")
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": list(chelsea_tensor.shape),
                                   "data": chelsea_tensor.ravel().tolist()}]})
    try:
        _ready(url, server)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"content-type": "application/json"})
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("connection") != "close"
        server.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # uvicorn's shutdown has run: the listener is closed, the connection is idle and kept
        connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"content-type": "application/json"})
        last = connection.getresponse()
        answer = json.loads(last.read())
        assert last.status == 200 and last.getheader("connection") == "close"
        assert top_label(np.array(answer["outputs"][0]["data"])) in CAT_LABELS
        connection.close()
        server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode in (0, -signal.SIGTERM)


def test_metrics_port_serves_metrics_without_the_key(tmp_path: Path) -> None:
    """The main port's /metrics needs the key; the metrics port serves only /metrics, and without it."""
    port, metrics_port = free_port(), free_port()
    server = _serve(tmp_path, "--port", str(port), "--metrics-port", str(metrics_port), "--api-key", "k3y")
    try:
        _ready(f"http://127.0.0.1:{port}", server)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and "inferd_requests_total" in scraped.text
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/v2/models/{MODEL}").status_code == 404
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
