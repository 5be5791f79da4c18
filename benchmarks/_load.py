"""Shared benchmark plumbing: machine facts, `inferd serve` subprocesses, V2 payloads, and the load generator.

Imported by the benchmark scripts for the orchestration helpers; run as a script it *is* the load generator:

    python benchmarks/_load.py SPEC.json      # prints one JSON object (the result) on stdout

The generator runs in its own process so that its CPU time is visible (it shares the machine's cores with the
server) and so that it imports only the HTTP client: payloads are prepared by the orchestrator and handed over
as files. Two modes:

* closed loop: `concurrency` workers, each sending requests back-to-back (a new one when the last answered);
* open loop: requests fired at a fixed `rate` whatever the answers, with at most `max_outstanding` in flight
  (a send that would exceed the cap is skipped and counted, never queued in the client).

Both loops are bounded by time and stop by themselves; every request has a client-side timeout. Three clients:

* `aiohttp` (the default): about 0.45 ms of CPU per 600 KB request on this machine, 0.7-0.9 ms at concurrency 1
  (against about 0.65 ms for tritonclient.http and 2.6 ms for httpx, `"client": "httpx"`);
* `raw`: keep-alive HTTP/1.1 on asyncio sockets, the request written as prepared bytes and the response parsed
  by httptools, in the spirit of wrk and Triton's perf_analyzer: a load generator that spends as little as
  possible of the two cores it shares with the server, so that what it measures is the server's work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PACKAGE = ROOT / "models" / "efficientnet-lite0"
MODEL = "efficientnet-lite0"
INFERENCE_HEADER = "Inference-Header-Content-Length"
HOST = "127.0.0.1"  # all traffic stays on loopback
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- statistics


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def tally(records: list[list[Any]], key: Callable[[list[Any]], Any]) -> dict[str, int]:
    """How many records fall under each key (as a string), for the per-status counts in the results."""
    return dict(Counter(str(key(r)) for r in records))


def latency_summary(seconds: list[float]) -> dict[str, float | int | None]:
    """Milliseconds: count, mean, p50/p90/p99, min and max."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    return {
        "count": len(values), "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50) or 0, 3), "p90": round(percentile(values, 90) or 0, 3),
        "p99": round(percentile(values, 99) or 0, 3), "min": round(values[0], 3), "max": round(values[-1], 3),
    }


# ---------------------------------------------------------------------------------------------- the machine


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    versions = {}
    for name in ("inferd", "onnxruntime", "openvino", "numpy", "uvicorn", "fastapi", "aiohttp", "httpx"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "memory_bytes": memory, "platform": platform.platform(), "python": platform.python_version(),
        "versions": versions, "loadavg_at_start": list(os.getloadavg()),
    }


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat; busy excludes idle and iowait."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already inside user
    idle = fields[3] + fields[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


CLIENTS = ("raw", "aiohttp", "httpx")


def benchmark_parser(doc: str | None, out_name: str, client: str = "aiohttp",
                     client_help: str = "the load generator's HTTP client") -> argparse.ArgumentParser:
    """The options every server benchmark takes (--package, --client, --no-wait, --out); scripts add their own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE)
    parser.add_argument("--client", choices=CLIENTS, default=client, help=client_help)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the machine to be idle first")
    parser.add_argument("--out", type=Path, default=RESULTS / out_name)
    return parser


def start_benchmark(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict[str, Any] | None]:
    """Parsed options, after checking the package exists and waiting for a quiet machine (unless --no-wait)."""
    args = parser.parse_args()
    if not (args.package / "manifest.json").is_file():
        sys.exit(f"{args.package} is missing: run `.venv/bin/inferd prepare models` first")
    return args, None if args.no_wait else wait_for_quiet()


def wait_for_quiet(max_busy: float = 0.2, window_s: float = 3.0, max_wait_s: float = 120.0) -> dict[str, Any]:
    """Wait (bounded) until the machine is mostly idle, as other jobs on a shared box distort every number.

    Returns what was seen; the benchmark goes ahead either way and its per-phase `other_processes_cpu_s` shows
    how much foreign load overlapped each measurement.
    """
    started = time.monotonic()
    while True:
        busy0, total0 = machine_cpu_seconds()
        time.sleep(window_s)
        busy1, total1 = machine_cpu_seconds()
        busy = (busy1 - busy0) / max(total1 - total0, 1e-9)
        waited = time.monotonic() - started
        if busy <= max_busy or waited >= max_wait_s:
            return {"busy_fraction": round(busy, 3), "waited_s": round(waited, 1), "quiet": busy <= max_busy}
        print(f"  machine {busy:.0%} busy with other work; waiting for it to quiet down ({waited:.0f} s)", flush=True)


class CpuMeter:
    """CPU used during a phase: by the server, by the load generator, and by everything else on the machine."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self.started = time.monotonic()
        self.server0 = process_cpu_seconds(server_pid) if server_pid else 0.0
        self.busy0, self.total0 = machine_cpu_seconds()

    def stop(self, client_cpu_s: float | None = None) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        busy, total = machine_cpu_seconds()
        server = (process_cpu_seconds(self.server_pid) - self.server0) if self.server_pid else None
        busy_s = busy - self.busy0
        other = busy_s - (server or 0) - (client_cpu_s or 0)
        return {
            "wall_s": round(wall, 3),
            "server_cpu_s": None if server is None else round(server, 3),
            "client_cpu_s": None if client_cpu_s is None else round(client_cpu_s, 3),
            "machine_busy_cpu_s": round(busy_s, 3),
            "machine_busy_fraction": round(busy_s / max(total - self.total0, 1e-9), 3),
            "other_processes_cpu_s": round(max(other, 0.0), 3),
        }


# ---------------------------------------------------------------------------------------------- HTTP helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, timeout: float = 120.0,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A blocking request with urllib (for control calls, never for load): (status, headers, body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


# ---------------------------------------------------------------------------------------------- the server


def inferd_command() -> list[str]:
    script = Path(sys.executable).parent / "inferd"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from inferd.cli import main; main()"]


class Server:
    """`inferd serve REPOSITORY --port P [flags]` as a subprocess; ready when GET /v2/health/ready answers 200."""

    def __init__(self, repository: Path, log_dir: Path, **flags: Any) -> None:
        self.repository = repository
        self.port = free_port()
        self.flags = flags
        self.argv = [*inferd_command(), "serve", str(repository), "--host", HOST, "--port", str(self.port)]
        for key, value in flags.items():
            option = key.replace("_", "-")
            if isinstance(value, bool):
                self.argv.append(f"--{option}" if value else f"--no-{option}")
            else:
                self.argv += [f"--{option}", str(value)]
        self.log_path = log_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> Server:
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = started + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http("GET", f"{self.url}/v2/health/ready", timeout=2)[0] == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server was not ready within 180 s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.startup_s = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Ctrl-C (uvicorn's graceful shutdown), then SIGTERM, then SIGKILL: only this process, by its id."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 40), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=wait)
                return

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def get_json(self, path: str) -> Any:
        status, _, body = http("GET", self.url + path)
        return json.loads(body) if status == 200 else {"status": status, "body": body.decode(errors="replace")}

    def model_stats(self) -> dict[str, int]:
        """Totals over the model's loaded versions: rows, engine runs, and cumulative ns in queue and compute."""
        stats = self.get_json("/v2/models/stats").get("model_stats", [])
        return {
            "inference_count": sum(s["inference_count"] for s in stats),
            "execution_count": sum(s["execution_count"] for s in stats),
            "queue_ns": sum(s["inference_stats"]["queue"]["ns"] for s in stats),
            "compute_ns": sum(s["inference_stats"]["compute_infer"]["ns"] for s in stats),
        }

    def describe(self) -> dict[str, Any]:
        return {"argv": self.argv[1:], "flags": self.flags, "startup_s": round(self.startup_s or 0, 3),
                "model": self.get_json(f"/v2/models/{MODEL}")}


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, float | None]:
    rows = after["inference_count"] - before["inference_count"]
    runs = after["execution_count"] - before["execution_count"]
    return {
        "rows": rows, "engine_runs": runs,
        "mean_batch_size": round(rows / runs, 3) if runs else None,
        "mean_compute_ms_per_run": round((after["compute_ns"] - before["compute_ns"]) / 1e6 / runs, 3) if runs else None,
        "mean_queue_ms_per_request": round((after["queue_ns"] - before["queue_ns"]) / 1e6 / rows, 3) if rows else None,
    }


# ---------------------------------------------------------------------------------------------- payloads

IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "cat")


def photos_as_jpeg(quality: int = 90) -> dict[str, bytes]:
    """Real photographs from scikit-image, JPEG-encoded with Pillow."""
    from PIL import Image
    from skimage import data

    encoded = {}
    for name in IMAGES:
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, format="JPEG", quality=quality)
        encoded[name] = buffer.getvalue()
    return encoded


def _v2_body(header: dict[str, Any], binary: bytes) -> tuple[bytes, int]:
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + binary, len(text)


# Both payload kinds ask for the logits as binary, as tritonclient does by default.
_BINARY_OUTPUT = [{"name": "logits", "parameters": {"binary_data": True}}]


def binary_tensor_body(tensor: Any) -> tuple[bytes, int]:
    """A V2 request with one preprocessed image as FP32 binary tensor data ([1,3,224,224], 602112 bytes)."""
    raw = tensor.astype("<f4").tobytes()
    header = {"inputs": [{"name": "image", "datatype": "FP32", "shape": list(tensor.shape),
                          "parameters": {"binary_data_size": len(raw)}}], "outputs": _BINARY_OUTPUT}
    return _v2_body(header, raw)


def jpeg_bytes_body(jpeg: bytes) -> tuple[bytes, int]:
    """A V2 request with one encoded image as a BYTES element (4-byte little-endian length, then the file)."""
    raw = len(jpeg).to_bytes(4, "little") + jpeg
    header = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                          "parameters": {"binary_data_size": len(raw)}}], "outputs": _BINARY_OUTPUT}
    return _v2_body(header, raw)


def write_payloads(kind: str, directory: Path, package: Path = DEFAULT_PACKAGE) -> list[dict[str, Any]]:
    """Write one request body per photo; returns what the generator's spec needs ("path", "header_length").

    Kind "tensor" writes the bare tensor, which the generator copies into a registered shared-memory region
    before each request (`_SharedMemoryInputs`) or sends over gRPC (`_GrpcInputs`); "input" describes it.
    """
    from inferd.io import preprocess_image
    from inferd.package import ModelPackage
    from inferd.types import ImageType

    spec = ModelPackage.load(package).manifest.inputs[0]
    assert isinstance(spec, ImageType), "the benchmarks need a model whose input is an image"
    directory.mkdir(parents=True, exist_ok=True)
    payloads = []
    for name, jpeg in photos_as_jpeg().items():
        if kind == "binary":
            body, header_length = binary_tensor_body(preprocess_image(jpeg, spec)[None])
        elif kind == "jpeg":
            body, header_length = jpeg_bytes_body(jpeg)
        elif kind == "tensor":
            tensor = preprocess_image(jpeg, spec)[None]
            body, header_length = tensor.tobytes(), 0
        else:
            raise ValueError(kind)
        path = directory / f"{kind}-{name}.bin"
        path.write_bytes(body)
        payload: dict[str, Any] = {"path": str(path), "header_length": header_length, "bytes": len(body), "image": name}
        if kind == "tensor":
            payload["input"] = {"name": spec.name, "shape": list(tensor.shape), "datatype": "FP32"}
        payloads.append(payload)
    return payloads


# ---------------------------------------------------------------------------------------------- running the generator


class LoadRun:
    """A load generator subprocess; `wait()` returns its JSON result."""

    def __init__(self, spec: dict[str, Any], work_dir: Path) -> None:
        handle, spec_path = tempfile.mkstemp(prefix="load-spec-", suffix=".json", dir=work_dir)
        os.close(handle)
        self.started_file = Path(spec_path + ".started")
        spec = {**spec, "started_file": str(self.started_file)}
        Path(spec_path).write_text(json.dumps(spec))
        self.spec = spec
        # Files, not pipes: a result larger than a pipe's buffer would block the generator until it is read.
        self.stdout_path = Path(spec_path + ".stdout")
        self.stderr_path = Path(spec_path + ".stderr")
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen([sys.executable, __file__, spec_path], stdout=stdout, stderr=stderr,
                                            cwd=ROOT)
        limit = spec.get("warmup_s", 0) + spec["duration_s"] + spec.get("request_timeout_s", 30) + 60
        self.deadline = time.monotonic() + limit

    def wait_started(self, timeout: float = 60) -> float:
        """Blocks until the generator sends its first request; returns that instant (time.time())."""
        deadline = time.monotonic() + timeout
        while not self.started_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the load generator did not start: {self.stderr_path.read_text()[-2000:]}")
            time.sleep(0.02)
        return float(self.started_file.read_text())

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, tick: Callable[[], None] | None = None, every_s: float = 0.5) -> dict[str, Any]:
        while self.process.poll() is None:
            if time.monotonic() > self.deadline:
                self.process.kill()
                self.process.wait()
                break
            if tick is not None:
                tick()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=every_s)
        out = self.stdout_path.read_bytes()
        if self.process.returncode != 0:
            raise RuntimeError(f"the load generator failed ({self.process.returncode}): "
                               f"{self.stderr_path.read_text()[-3000:]}")
        result: dict[str, Any] = json.loads(out)
        return result


def run_load(spec: dict[str, Any], work_dir: Path, server: Server | None = None) -> dict[str, Any]:
    """Run a generator to completion, with the server's CPU, the machine's CPU and the batcher's stats around it."""
    before = server.model_stats() if server else None
    run = LoadRun(spec, work_dir)
    run.wait_started()
    meter = CpuMeter(server.pid if server else None)
    result = run.wait()
    result["cpu"] = meter.stop(result.get("client_cpu_s"))
    if server and before is not None:
        result["batching"] = stats_delta(before, server.model_stats())
    return result


RECORD_COLUMNS = ["start_s", "latency_s", "status", "retry_after", "version", "client_error"]
"""What each of a generator's `records` holds (ask for them with `"records": true` in the spec)."""


def closed_spec(url: str, payloads: list[dict[str, Any]], concurrency: int, duration_s: float,
                warmup_s: float = 2.0, **extra: Any) -> dict[str, Any]:
    return {"url": url, "payloads": payloads, "mode": "closed", "concurrency": concurrency,
            "duration_s": duration_s, "warmup_s": warmup_s, **extra}


def finish(path: Path, result: dict[str, Any], records: list[list[Any]], started: float) -> None:
    """The end every acceptance benchmark shares: the overall verdict, the raw records, the wall time, the file."""
    result["acceptance"]["passed"] = all(result["acceptance"].values())
    result["records_columns"] = RECORD_COLUMNS
    result["records"] = records
    result["total_wall_s"] = round(time.time() - started, 1)
    write_json(path, result)


def write_json(path: Path, result: dict[str, Any]) -> None:
    """Indented JSON, except that a top-level "records" list is written one record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    records = result.get("records")
    head = {k: v for k, v in result.items() if k != "records"}
    text = json.dumps(head, indent=1)
    if records is not None:
        rows = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in records)
        text = text[:-2] + ',\n "records": [\n  ' + rows + "\n ]\n}"
    json.loads(text)  # never leave a broken file behind
    path.write_text(text + "\n")


# ---------------------------------------------------------------------------------------------- the generator itself


class _RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; httptools parses the responses."""

    def __init__(self) -> None:
        import httptools

        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").title()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._answer is not None
        if not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), self._headers, b"".join(self._body)))

    async def exchange(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.transport is not None
        self._headers, self._body = {}, []
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        return await self._answer


class _RawClient:
    """Connections opened on demand up to the cap and reused; one broken by the server is replaced."""

    def __init__(self, connections: int) -> None:
        self._idle: list[_RawConnection] = []
        self._slots = asyncio.Semaphore(connections)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            if connection is None or connection.closed:
                _, connection = await asyncio.get_running_loop().create_connection(
                    _RawConnection, parts.hostname or HOST, parts.port or 80)
            try:
                answer = await connection.exchange(head, body)
            except BaseException:
                assert connection.transport is not None
                connection.transport.close()
                raise
            if answer[1].get("Connection", "").lower() != "close":
                self._idle.append(connection)
            return answer

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()


class _Client:
    """aiohttp (default), httpx or the raw client behind one call: post(url, body, headers) -> (status, headers, body)."""

    def __init__(self, kind: str, connections: int, timeout_s: float) -> None:
        self.kind = kind
        self.connections = connections
        self.timeout_s = timeout_s
        self._session: Any = None

    async def __aenter__(self) -> _Client:
        if self.kind == "raw":
            self._session = _RawClient(self.connections)
        elif self.kind == "httpx":
            import httpx

            self._session = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections),
                timeout=httpx.Timeout(self.timeout_s), trust_env=False)
        else:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections), trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "raw":
            self._session.close()
        elif self.kind == "httpx":
            await self._session.aclose()
        else:
            await self._session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        if self.kind == "raw":
            async with asyncio.timeout(self.timeout_s):
                return await self._session.post(url, body, headers)
        if self.kind == "httpx":
            response = await self._session.post(url, content=body, headers=headers)
            return response.status_code, response.headers, response.content
        async with self._session.post(url, data=body, headers=headers) as response:
            return response.status, response.headers, await response.read()


class _SharedMemoryInputs:
    """Triton's system shared memory from the client side: one region per concurrent request slot, holding
    the input tensor and, after it, the output; each request copies its tensor in and the output out, which
    is what a local client does instead of sending and receiving the bytes."""

    def __init__(self, payloads: list[dict[str, Any]], slots: int, output_bytes: int) -> None:
        from multiprocessing import shared_memory

        self.tensors = [Path(p["path"]).read_bytes() for p in payloads]
        self.input_bytes = len(self.tensors[0])
        if any(len(t) != self.input_bytes for t in self.tensors):
            raise ValueError("shared memory payloads must all have one shape")
        self.output_bytes = output_bytes
        prefix = f"inferd-bench-{os.getpid()}"
        self.regions = [shared_memory.SharedMemory(f"{prefix}-{k}", create=True,
                                                   size=self.input_bytes + output_bytes) for k in range(slots)]
        self.views = [memoryview(region.buf or b"") for region in self.regions]
        self.bodies = [json.dumps({
            "inputs": [{**payloads[0]["input"], "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": self.input_bytes}}],
            "outputs": [{"name": "logits", "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": output_bytes,
                "shared_memory_offset": self.input_bytes}}],
        }).encode() for region in self.regions]

    async def register(self, client: _Client, url: str) -> None:
        """Register every region under its own (process-unique) name."""
        for region in self.regions:
            body = json.dumps({"key": f"/{region.name}", "offset": 0, "byte_size": region.size}).encode()
            await self._call(client, url, f"region/{region.name}/register", body)

    async def unregister(self, client: _Client, url: str) -> None:
        for region in self.regions:
            await self._call(client, url, f"region/{region.name}/unregister", b"")

    @staticmethod
    async def _call(client: _Client, url: str, action: str, body: bytes) -> None:
        base = url.split("/v2/", 1)[0]
        status, _, answer = await client.post(f"{base}/v2/systemsharedmemory/{action}", body,
                                              {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"shared memory {action} failed: {status} {answer[:200]!r}")

    def request(self, index: int, slot: int) -> bytes:
        """Copy the tensor into the slot's region; the body, which only names the region, never changes."""
        self.views[slot][:self.input_bytes] = self.tensors[index % len(self.tensors)]
        return self.bodies[slot]

    def output(self, slot: int) -> bytes:
        return bytes(self.views[slot][self.input_bytes:self.input_bytes + self.output_bytes])

    def close(self) -> None:
        for view in self.views:
            view.release()
        for region in self.regions:
            region.close()
            region.unlink()


class _GrpcInputs:
    """The bare tensors sent with tritonclient.grpc.aio, the way a Triton gRPC client sends them (raw contents)."""

    def __init__(self, payloads: list[dict[str, Any]], address: str, model: str) -> None:
        import numpy as np
        import tritonclient.grpc.aio as grpc_client

        self.client = grpc_client.InferenceServerClient(address)
        self.model = model
        described = payloads[0]["input"]
        self.inputs = []
        for payload in payloads:
            tensor = np.frombuffer(Path(payload["path"]).read_bytes(), np.float32).reshape(described["shape"])
            item = grpc_client.InferInput(described["name"], described["shape"], described["datatype"])
            item.set_data_from_numpy(tensor)
            self.inputs.append(item)

    async def infer(self, index: int) -> tuple[int, str | None]:
        """(200, None), or (0, the gRPC status name) for a refused or failed call."""
        from tritonclient.utils import InferenceServerException

        try:
            result = await self.client.infer(self.model, [self.inputs[index % len(self.inputs)]])
        except InferenceServerException as exc:
            return 0, str(exc.status())
        return 200, None if result.as_numpy("logits") is not None else "unexpected_body"

    async def close(self) -> None:
        await self.client.close()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    bodies = [(Path(p["path"]).read_bytes(), str(p["header_length"])) for p in spec["payloads"]]
    mode = spec["mode"]
    warmup, duration = float(spec.get("warmup_s", 0)), float(spec["duration_s"])
    timeout = float(spec.get("request_timeout_s", 30))
    parse_version = bool(spec.get("parse_version", False))
    expected_output = int(spec.get("expected_output_bytes", 4000))
    cap = int(spec.get("max_outstanding", 256)) if mode == "open" else int(spec["concurrency"])
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    # records: [start relative to the window, latency s, status or 0, Retry-After or None, version, error or None]
    records: list[list[Any]] = []
    skipped = 0
    max_lag = 0.0

    shared = _SharedMemoryInputs(spec["payloads"], cap, expected_output) if spec.get("shared_memory") else None
    if shared and mode != "closed":
        raise ValueError("shared memory inputs need the closed mode: one region per concurrent request")

    grpc_inputs = _GrpcInputs(spec["payloads"], spec["grpc_address"], spec["model"]) if spec.get("grpc_address") else None

    async with _Client(spec.get("client", "aiohttp"), cap, timeout) as client:
        if shared:
            await shared.register(client, spec["url"])

        async def one(index: int) -> bool:
            started = clock()
            if grpc_inputs:
                status, error = await grpc_inputs.infer(index)
                records.append([started - window_start, clock() - started, status, None, None, error])
                return status == 200 and error is None
            if shared:
                body, headers = shared.request(index, index % cap), {"Content-Type": "application/json"}
            else:
                body, header_length = bodies[index % len(bodies)]
                headers = {INFERENCE_HEADER: header_length, "Content-Type": "application/octet-stream"}
            status, retry, version, error = 0, None, None, None
            try:
                status, response_headers, payload = await client.post(spec["url"], body, headers)
                retry = response_headers.get("Retry-After")
                if status == 200 and shared:
                    if INFERENCE_HEADER in response_headers or len(shared.output(index % cap)) != expected_output:
                        error = "unexpected_body"
                elif status == 200:
                    length = int(response_headers.get(INFERENCE_HEADER, "0") or 0)
                    if length == 0 or len(payload) != length + expected_output:
                        error = "unexpected_body"
                    elif parse_version:
                        version = json.loads(payload[:length]).get("model_version")
            except TimeoutError:
                error = "client_timeout"
            except Exception as exc:
                error = type(exc).__name__
            records.append([started - window_start, clock() - started, status, retry, version, error])
            return status == 200 and error is None

        cpu_start = _cpu_seconds()
        t0 = clock()
        window_start = t0 + warmup
        window_end = window_start + duration
        Path(spec["started_file"]).write_text(repr(time.time()))

        if mode == "closed":
            concurrency = int(spec["concurrency"])

            backoff = float(spec.get("backoff_after_failure_s", 0))

            async def worker(first: int) -> None:
                index = first
                while clock() < window_end:
                    if not await one(index) and backoff:
                        await asyncio.sleep(backoff)  # a refused request is answered at once: do not spin on it
                    index += concurrency

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        else:
            rate = float(spec["rate"])
            tasks: set[asyncio.Task[Any]] = set()
            total = int(rate * (warmup + duration))
            for index in range(total):
                due = t0 + index / rate
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                max_lag = max(max_lag, clock() - due)
                if len(tasks) >= cap:
                    skipped += 1
                    continue
                task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(one(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=timeout + 10)
        elapsed = clock() - t0
        client_cpu = _cpu_seconds() - cpu_start
        if shared:
            await shared.unregister(client, spec["url"])
            shared.close()
        if grpc_inputs:
            await grpc_inputs.close()

    in_window = [r for r in records if 0 <= r[0] < duration]
    finished_in_window = [r for r in records if 0 <= r[0] + r[1] <= duration]
    ok = [r for r in in_window if r[2] == 200 and r[5] is None]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in in_window:
        if r[5] is not None:
            errors[r[5]] = errors.get(r[5], 0) + 1
        else:
            statuses[str(r[2])] = statuses.get(str(r[2]), 0) + 1
    result: dict[str, Any] = {
        "mode": mode, "client": spec.get("client", "aiohttp"),
        "concurrency": spec.get("concurrency"), "rate_rps": spec.get("rate"), "max_outstanding": cap,
        "warmup_s": warmup, "duration_s": duration, "elapsed_s": round(elapsed, 3),
        "payload_bytes": [len(b) for b, _ in bodies],
        "sent_total": len(records), "sent_in_window": len(in_window),
        "skipped_at_cap": skipped, "max_send_lag_ms": round(max_lag * 1000, 3),
        "statuses": statuses, "errors": errors,
        "throughput_rps": round(sum(1 for r in finished_in_window if r[2] == 200 and r[5] is None) / duration, 3),
        "latency_ms": latency_summary([r[1] for r in ok]),
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(len(records), 1), 4),
        "window_start_unix": time.time() - (clock() - window_start),
    }
    if spec.get("records"):
        result["records"] = [[round(r[0], 5), round(r[1], 5), *r[2:]] for r in records]
    return result


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("client") == "raw":
        import uvloop  # the raw client is about speed; uvicorn[standard] brings uvloop

        result = uvloop.run(_generate(spec))
    else:
        result = asyncio.run(_generate(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
