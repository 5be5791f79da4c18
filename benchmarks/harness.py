"""The benchmarks' harness: machine facts, `inferd serve` subprocesses, load generator runs and result files.

The load itself comes from `loadgen`, run as a subprocess (`LoadRun`) so that its CPU time is measured apart
from the server's; the request bodies it sends come from `payloads`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import loadgen

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PACKAGE = ROOT / "models" / "efficientnet-lite0"
MODEL = "efficientnet-lite0"
HOST = "127.0.0.1"  # all traffic stays on loopback
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
            self.process = subprocess.Popen([sys.executable, loadgen.__file__, spec_path], stdout=stdout, stderr=stderr,
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


def closed_spec(url: str, payloads: list[dict[str, Any]], concurrency: int, duration_s: float,
                warmup_s: float = 2.0, **extra: Any) -> dict[str, Any]:
    return {"url": url, "payloads": payloads, "mode": "closed", "concurrency": concurrency,
            "duration_s": duration_s, "warmup_s": warmup_s, **extra}


def finish(path: Path, result: dict[str, Any], records: list[loadgen.Record], started: float) -> None:
    """The end every acceptance benchmark shares: the overall verdict, the raw records, the wall time, the file."""
    result["acceptance"]["passed"] = all(result["acceptance"].values())
    result["records_columns"] = loadgen.RECORD_COLUMNS
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
