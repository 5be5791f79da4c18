"""Triton's own perf_analyzer measures a real `inferd serve` over HTTP and gRPC at concurrency 1 and 8.

perf_analyzer reads the server's statistics around each measurement window and
aborts unless their compute-input, -infer and -output counts moved together;
it then reports the server's queue and compute phases from them, so a passing
run also shows that every phase has time in it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.perf_analyzer import PerfAnalyzer, Unavailable, read_report

MODEL = "efficientnet-lite0"
TEXT_MODEL = "minilm-l6"


@pytest.fixture(scope="module")
def perf_analyzer() -> PerfAnalyzer:
    try:
        return PerfAnalyzer.fetch()
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def served(default_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`inferd serve` with the default image and text models, HTTP and gRPC on loopback: the address of each."""
    repository = tmp_path_factory.mktemp("perf-analyzer-repository")
    for name in (MODEL, TEXT_MODEL):
        (repository / name).symlink_to(default_repository / name)
    ports = {"http": free_port(), "grpc": free_port()}
    log = (tmp_path_factory.mktemp("perf-analyzer-log") / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "inferd", "serve", str(repository), "--host", "127.0.0.1", "--port", str(ports["http"]),
         "--grpc-port", str(ports["grpc"]), "--no-access-log"], stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"inferd serve exited with {process.returncode}; see {log.name}"
            try:
                if httpx.get(f"http://127.0.0.1:{ports['http']}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"inferd serve was not ready in 120 s; see {log.name}"
            time.sleep(0.1)
        yield {protocol: f"127.0.0.1:{port}" for protocol, port in ports.items()}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_inferd(perf_analyzer: PerfAnalyzer, served: dict[str, str], protocol: str,
                                       tmp_path: Path) -> None:
    """Count windows of 16 requests and a loose stability bound: on a loaded 2-core machine the windows vary
    far more than perf_analyzer's default 10 %, and this test asserts that it measures, not how fast."""
    report = tmp_path / "report.csv"
    run = perf_analyzer.run(served[protocol], MODEL, report, protocol=protocol, stability_percent=100, timeout_s=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "compute counts must be the same" not in run.stdout + run.stderr
    rows = read_report(report)
    assert [row["Concurrency"] for row in rows] == [1, 8]
    for row in rows:
        assert row["Inferences/Second"] > 0, row
        for phase in ("Server Compute Input", "Server Compute Infer", "Server Compute Output"):
            assert row[phase] > 0, (phase, row)
    assert "Request concurrency: 8" in run.stdout and "Throughput:" in run.stdout


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_the_text_model(perf_analyzer: PerfAnalyzer, served: dict[str, str], protocol: str,
                                             tmp_path: Path) -> None:
    """perf_analyzer sends the strings it makes up in the shape the metadata gives: it refused a text input shaped
    [-1] ("unable to set shape for the input") and takes [-1, 1], as Triton derives it from dims [1]."""
    report = tmp_path / "report.csv"
    run = perf_analyzer.run(served[protocol], TEXT_MODEL, report, protocol=protocol, concurrency="1:1",
                            stability_percent=100, timeout_s=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (row,) = read_report(report)
    assert row["Inferences/Second"] > 0 and row["Server Compute Infer"] > 0, row
