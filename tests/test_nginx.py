"""Real nginx, from the bundle's config, in front of three `inferd serve` processes on loopback (issue 18.5).

(a) a backend killed with SIGKILL under load: every request that had not reached it succeeds (nginx retries a
connect error elsewhere), and the only failures are the requests in flight on it; (b) a rolling restart with
SIGTERM, one backend at a time: no request fails; (c) the rate limit answers 429 with Retry-After.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from inferd.deploy import bundle
from inferd.serve.settings import ServerSettings
from tests.conftest import CAT_LABELS, free_port, top_label

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (.ci/run installs it)")

MODEL = "efficientnet-lite0"
CLIENTS = 6


class Backend:
    """One `inferd serve` process, as a unit or a container would start it."""

    def __init__(self, repository: Path, port: int, log: Path) -> None:
        self.repository, self.port, self.grpc_port, self.log = repository, port, free_port(), log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "inferd", "serve", str(self.repository), "--host", "127.0.0.1",
                 "--port", str(self.port), "--grpc-port", str(self.grpc_port), "--drain-timeout", "10",
                 "--no-access-log"], stdout=log, stderr=log)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                if httpx.get(f"http://{self.address}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"backend {self.address} not ready: {self.log.read_text()[-2000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=60)


class Nginx:
    def __init__(self, prefix: Path, config: str) -> None:
        for folder in ("logs", "temp"):
            (prefix / folder).mkdir(parents=True, exist_ok=True)
        self.prefix, self.conf = prefix, prefix / "nginx.conf"
        # In the foreground, and as this user: as root nginx's workers would be `nobody`, unable to buffer bodies here.
        user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};\n" if os.getuid() == 0 else ""
        self.conf.write_text(user + config.replace("worker_processes auto;", "worker_processes 1;\ndaemon off;"))
        self.process = subprocess.Popen(["nginx", "-p", f"{prefix}/", "-c", str(self.conf), "-e", "stderr"],
                                        stderr=subprocess.PIPE)

    def access_log(self) -> list[str]:
        return (self.prefix / "logs" / "access.log").read_text().splitlines()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        self.process.wait(timeout=30)


def wait_listening(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens at {url}")


@pytest.fixture(scope="module")
def backends(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Backend]]:
    repository = tmp_path_factory.mktemp("repository")
    shutil.copytree(default_repository / MODEL, repository / MODEL)
    logs = tmp_path_factory.mktemp("logs")
    started = [Backend(repository, free_port(), logs / f"backend{i}.log") for i in range(3)]
    started[0].start()
    started[0].wait_ready()  # the first compiles the model into the shared cache; the others load it from there
    for backend in started[1:]:
        backend.start()
    for backend in started[1:]:
        backend.wait_ready()
    yield started
    for backend in started:
        backend.stop(signal.SIGKILL)


def balancer(backends: list[Backend], prefix: Path, **limits: int) -> Nginx:
    settings = ServerSettings(host="127.0.0.1", port=backends[0].port)
    config = bundle.render_nginx(settings, bundle.BalancerSettings(
        tuple(bundle.Backend("127.0.0.1", b.port, b.grpc_port) for b in backends), listen_port=free_port(),
        listen_grpc_port=free_port(), **limits))  # type: ignore[arg-type]  # rate and burst
    nginx = Nginx(prefix, config)
    port = re.search(r"listen 127\.0\.0\.1:(\d+);", config).group(1)  # type: ignore[union-attr]
    nginx.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    nginx.grpc = "127.0.0.1:" + re.search(r"listen 127\.0\.0\.1:(\d+) http2;", config).group(1)  # type: ignore[union-attr,attr-defined]
    wait_listening(nginx.url)  # type: ignore[attr-defined]
    return nginx


def under_load(url: str, image: bytes, during: Callable[[], None]) -> list[int | str]:
    """`CLIENTS` threads post images to `url` while `during` runs; each answer's status or error name."""
    results: list[int | str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                try:
                    status: int | str = http.post(f"{url}/predict/{MODEL}", files={"image": ("c.jpg", image)}).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                results.append(status)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        during()
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=90)
    return results


def test_rolling_restart_with_sigterm_loses_no_request(backends: list[Backend], coffee_jpeg: bytes,
                                                       tmp_path: Path) -> None:
    """The procedure the bundle's nginx.conf gives: one backend at a time, and after it is ready, `fail_timeout`
    before the next, so nginx never counts every backend failed at once."""
    fail_timeout_s = 2
    nginx = balancer(backends, tmp_path, rate_per_s=10_000, burst=10_000, fail_timeout_s=fail_timeout_s)
    try:
        def restart_each() -> None:
            for backend in backends:
                backend.stop(signal.SIGTERM)
                # uvicorn ends a clean drain by re-raising the signal: killed by SIGTERM is a clean stop for systemd too
                assert backend.process is not None and backend.process.returncode in (0, -signal.SIGTERM)
                backend.start()
                backend.wait_ready()
                time.sleep(fail_timeout_s)

        results = under_load(nginx.url, coffee_jpeg, restart_each)  # type: ignore[attr-defined]
        failures = [line for line in nginx.access_log() if '" 200 ' not in line]
        errors = (nginx.prefix / "logs" / "error.log").read_text().splitlines()
    finally:
        nginx.stop()
    failed = [r for r in results if r != 200]
    print(f"rolling restart: {len(results)} requests, {len(failed)} failed {failed[:5]}")
    if failed:
        print("\n".join(["failed requests in nginx's access log:", *failures[:10], "its error log:", *errors[-20:]]))
    assert len(results) > 20 and not failed


def test_sigkill_fails_only_the_requests_in_flight_there(backends: list[Backend], coffee_jpeg: bytes,
                                                         tmp_path: Path) -> None:
    nginx = balancer(backends, tmp_path, rate_per_s=10_000, burst=10_000)
    victim = backends[1]
    try:
        results = under_load(nginx.url, coffee_jpeg, lambda: victim.stop(signal.SIGKILL))  # type: ignore[attr-defined]
        log = nginx.access_log()
    finally:
        nginx.stop()
        victim.start()
        victim.wait_ready()
    failed = [r for r in results if r != 200]
    posts = [line for line in log if "POST /predict/" in line]
    upstreams = [re.search(r"upstream=(.*) upstream_status", line).group(1) for line in posts]  # type: ignore[union-attr]
    statuses = [int(line.split('" ')[1].split()[0]) for line in posts]
    lost = [u for u, s in zip(upstreams, statuses, strict=True) if s != 200]
    retried = [u for u, s in zip(upstreams, statuses, strict=True) if s == 200 and "," in u]
    print(f"SIGKILL: {len(results)} requests, {len(failed)} failed (in flight on {victim.address}: {len(lost)}), "
          f"{len(retried)} sent elsewhere after a connect error")
    assert len(posts) == len(results)
    # Every failure was a request nginx had already sent to the killed backend, and no more than were in flight.
    assert len(failed) == len(lost) <= CLIENTS
    assert all(u.split(", ")[-1] == victim.address for u in lost)
    # Every request that had not reached it succeeded.
    assert all(s == 200 for u, s in zip(upstreams, statuses, strict=True) if victim.address not in u)


def test_the_rate_limit_answers_429_with_retry_after(backends: list[Backend], tmp_path: Path) -> None:
    nginx = balancer(backends, tmp_path, rate_per_s=1, burst=1)
    try:
        answers = [httpx.get(f"{nginx.url}/v2/health/live", timeout=10) for _ in range(6)]  # type: ignore[attr-defined]
    finally:
        nginx.stop()
    limited = [a for a in answers if a.status_code == 429]
    assert answers[0].status_code == 200 and len(limited) >= 3
    assert all(a.headers["retry-after"] == "1" and "too many requests" in a.json()["error"] for a in limited)



def test_grpc_goes_through_nginx_over_http2(backends: list[Backend], chelsea_tensor: np.ndarray, tmp_path: Path) -> None:
    """The bundle's grpc_pass listener: V2 over gRPC through nginx, spread over the backends' gRPC ports."""
    import tritonclient.grpc as triton

    nginx = balancer(backends, tmp_path, rate_per_s=10_000, burst=10_000)
    try:
        client = triton.InferenceServerClient(nginx.grpc)  # type: ignore[attr-defined]
        assert client.is_server_ready()
        image = triton.InferInput("image", list(chelsea_tensor.shape), "FP32")
        image.set_data_from_numpy(chelsea_tensor)
        labels = {top_label(client.infer(MODEL, [image]).as_numpy("logits")[0]) for _ in range(6)}
        log = nginx.access_log()
    finally:
        nginx.stop()
    assert labels <= CAT_LABELS and labels
    infers = [line for line in log if "ModelInfer HTTP/2.0" in line]
    assert len(infers) == 6 and all(" 200 " in line for line in infers)
    used = {re.search(r"upstream=(\S+)", line).group(1) for line in infers}  # type: ignore[union-attr]
    assert used <= {f"127.0.0.1:{b.grpc_port}" for b in backends} and len(used) >= 2  # round robin
