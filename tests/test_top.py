"""`inferd top` (issue 20.4) against real servers on loopback under real traffic, and its arithmetic against Prometheus.

The quantiles must be the ones a Grafana panel shows for the same buckets, so the unit tests hand the same buckets
to Prometheus's own `histogram_quantile` (through `promtool test rules`) and to `inferd top`'s.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from unittest import mock

import httpx
import pytest
from rich.console import Console

from inferd.serve.metrics.series import LATENCY_BUCKETS
from inferd.serve.monitor.quantile import bucket_deltas, counter_delta, histogram_quantile
from inferd.serve.monitor.sample import ServerSample
from inferd.serve.monitor.watch import Monitor
from tests.conftest import LiveServer, free_port

MODEL = "efficientnet-lite0"
KEY = "top-secret-key"


def inferd_top(*args: str) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in a process of its own."""
    return subprocess.run([sys.executable, "-m", "inferd", "top", *args], capture_output=True, text=True, timeout=120)


def top_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """The same entry point (`inferd.cli.main`, which turns errors into exit 2 and one line) in this process, which
    saves a Python start per call; the servers answer from their own threads."""
    from inferd.cli import main

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["inferd", "top", *args]), pytest.raises(SystemExit) as exited:
        main()
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, int(exited.value.code or 0), out, err)


class Traffic:
    """Client threads posting the cat photo to one model until stopped, each answer's status and latency kept."""

    def __init__(self, url: str, photo: bytes, clients: int, headers: dict[str, str] | None = None) -> None:
        self.url, self.photo, self.headers = f"{url}/predict/{MODEL}", photo, headers or {}
        self.answers: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with httpx.Client(headers=self.headers, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                status = client.post(self.url, files={"image": ("chelsea.png", self.photo, "image/png")}).status_code
                self.answers.append((status, time.perf_counter() - started))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def latencies(self, status: int) -> list[float]:
        return [seconds for answer, seconds in self.answers if answer == status]


@pytest.fixture(scope="module")
def guarded(default_repository: Path) -> Iterator[LiveServer]:
    """A second server that wants an API key and queues one request at most, so a little concurrency is refused."""
    from inferd.serve import ServerSettings
    from inferd.serve.settings import ServingSettings

    settings = ServerSettings(repository=default_repository, model_control="explicit", load_models=[MODEL],
                              api_key=KEY, access_log=False,
                              models=ServingSettings(max_batch_size=1, max_queue_size=1, max_queue_delay_ms=0))
    with LiveServer(settings) as live:
        yield live


def _bucket_range(latencies: list[float]) -> tuple[float, float]:
    """The latency buckets the client's measurements span, one more below: the server does not time the HTTP
    exchange around a request, which may move it one bucket down; it can never make it slower."""
    bounds = [0.0, *LATENCY_BUCKETS, math.inf]
    low = bisect.bisect_left(bounds, min(latencies)) - 1
    high = bisect.bisect_left(bounds, max(latencies))
    return bounds[max(low - 1, 0)], bounds[high]


def test_once_json_two_servers_traffic_refusals_and_a_down_one(server: LiveServer, guarded: LiveServer,
                                                                 chelsea_png: bytes) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with Traffic(server.url, chelsea_png, clients=1) as steady, \
            Traffic(guarded.url, chelsea_png, clients=6, headers={"X-API-Key": KEY}) as burst:
        time.sleep(0.5)  # both kinds of traffic are flowing before the first scrape
        result = inferd_top(server.url, guarded.url, nobody, "--once", "--json", "--interval", "1", "--api-key", KEY)
    assert result.returncode == 1, result.stderr  # printed, and one server is down
    sample = json.loads(result.stdout)
    assert abs(datetime.fromisoformat(sample["time"]).timestamp() - time.time()) < 60
    first, second, down = sample["servers"]
    assert [s["url"] for s in sample["servers"]] == [server.url, guarded.url, nobody]

    assert first["up"] and first["rss_bytes"] > 0 and first["cpu_percent"] >= 0
    assert 0.9 < first["interval_s"] < 5
    models = {m["model"]: m for m in first["models"]}
    assert set(models) == {MODEL, "minilm-l6"}
    cat = models[MODEL]
    assert cat["requests_per_s"] > 0
    low, high = _bucket_range(steady.latencies(200))
    assert low <= cat["p50_s"] <= high, (cat["p50_s"], low, high)
    assert cat["p50_s"] <= cat["p99_s"] <= high
    assert 0 < cat["compute_time_s"] < high and 0 <= cat["queue_time_s"] < high
    assert cat["batch_size_mean"] >= 1 and sum(cat["batch_sizes"].values()) > 0
    assert cat["refusals_per_s"] == 0 and cat["errors_per_s"] == 0
    assert models["minilm-l6"]["requests_per_s"] == 0 and models["minilm-l6"]["p50_s"] is None

    assert second["up"] and second["rss_bytes"] > 0
    refused = {m["model"]: m for m in second["models"]}[MODEL]
    client_refusals = sum(1 for status, _ in burst.answers if status == 429)
    assert refused["refusals_per_s"] > 0 and 0 < refused["refusals"]["429"] <= client_refusals
    assert refused["requests_per_s"] > refused["refusals_per_s"]  # some answers were 200s
    assert set(refused["batch_sizes"]) == {"1"} and refused["batch_size_mean"] == 1  # max_batch_size 1

    assert not down["up"] and down["models"] == [] and "cannot connect" in down["error"]


def test_once_table_without_json(server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    result = top_here(capsys, server.url, "--once", "--interval", "0.2")
    assert result.returncode == 0, result.stderr
    for words in (server.url, MODEL, "minilm-l6", "p99 ms", "RSS"):
        assert words in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["ftp://example", "--once"], "is not an http(s) address"),
    (["http://127.0.0.1:99999", "--once"], "is not a URL"),
    (["--once", "--json", "--interval", "0"], "--interval 0 is out of range"),
    (["--json"], "add --once"),
])
def test_user_errors_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    result = top_here(capsys, *args)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


def test_unreachable_server_once_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    result = top_here(capsys, nobody, "--once", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and nobody in result.stderr
    assert "cannot connect" in result.stderr


def test_api_key_missing_or_wrong_says_so(guarded: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    for args in ([], ["--api-key", "wrong"]):
        result = top_here(capsys, guarded.url, "--once", *args)
        assert result.returncode == 2 and "API key" in result.stderr, result.stderr
    answered = top_here(capsys, f"{guarded.url}/metrics", "--once", "--json", "--interval", "0.2", "--api-key", KEY)
    assert answered.returncode == 0 and json.loads(answered.stdout)["servers"][0]["up"], answered.stderr


def test_live_view_renders_servers_and_models(server: LiveServer, chelsea_png: bytes) -> None:
    from inferd.cli.top_view import top_view

    nobody = f"http://127.0.0.1:{free_port()}"

    async def two_polls() -> list[ServerSample]:
        monitor = Monitor([server.url, nobody])
        try:
            await monitor.poll()
            await asyncio.sleep(0.5)
            return await monitor.poll()
        finally:
            await monitor.aclose()

    with Traffic(server.url, chelsea_png, clients=1):
        samples = asyncio.run(two_polls())
    console = Console(record=True, width=160, force_terminal=False)
    console.print(top_view(samples, 0.5))
    text = console.export_text()
    for words in (MODEL, "minilm-l6", "req/s", "p50 ms", "wait+compute ms", "batch sizes", "RSS", "1/2 up", f"{nobody}  down"):
        assert words in text, text


def test_a_server_that_goes_away_is_down_and_recovers(default_repository: Path) -> None:
    """The view keeps a server's place while it does not answer and resumes its rates when it answers again."""
    from inferd.serve import ServerSettings

    live = LiveServer(ServerSettings(repository=default_repository, model_control="explicit", access_log=False))

    async def watch() -> list[ServerSample]:
        monitor = Monitor([live.url], timeout_s=10)  # generous: a loaded machine is slow, not down
        try:
            samples = await monitor.poll()
            with live:
                samples += await monitor.poll()
                await asyncio.sleep(0.2)
                samples += await monitor.poll()
            return samples + await monitor.poll()
        finally:
            await monitor.aclose()

    before, first, second, after = asyncio.run(watch())
    assert [s.up for s in (before, first, second, after)] == [False, True, True, False], (before, first, after)
    assert "connection refused" in (before.error or "") and "connection refused" in (after.error or "")
    assert first.cpu_percent is None and second.cpu_percent is not None and second.rss_bytes  # rates need two


# Prometheus's histogram_quantile on the same buckets: the promtool unit test below fails unless they agree.
CASES: dict[str, dict[float, float]] = {
    # the documented example: rank 0.5·7 = 3.5 in (0.005, 0.01], 2.5 of its 4 → 0.005 + 0.005·2.5/4
    "documented": {0.005: 1, 0.01: 5, math.inf: 7},
    "first bucket": {0.001: 10, 0.01: 10, math.inf: 10},
    "in +Inf": {0.1: 1, 1.0: 2, math.inf: 100},
    "server buckets": dict(zip([*LATENCY_BUCKETS, math.inf],
                               [0, 0, 3, 40, 90, 131, 140, 144, 144, 145, 145, 145, 145, 145, 146], strict=True)),
}


def test_quantiles_by_hand() -> None:
    assert histogram_quantile(0.5, CASES["documented"]) == pytest.approx(0.008125)
    assert histogram_quantile(0.5, CASES["first bucket"]) == pytest.approx(0.0005)  # from 0, half of 0.001
    assert histogram_quantile(0.99, CASES["in +Inf"]) == 1.0  # the highest finite bound
    assert math.isnan(histogram_quantile(0.5, {0.1: 0, math.inf: 0}))
    assert math.isnan(histogram_quantile(0.5, {0.1: 3, 1.0: 4}))  # no +Inf bucket
    assert histogram_quantile(0.5, {0.1: 3, 1.0: 2, math.inf: 4}) == histogram_quantile(0.5, {0.1: 3, 1.0: 3,
                                                                                               math.inf: 4})


def test_deltas_and_resets() -> None:
    assert counter_delta(15, 10) == 5 and counter_delta(3, 10) == 3  # a restart counts from zero
    before = {0.1: 2, 1.0: 5, math.inf: 6}
    assert bucket_deltas({0.1: 4, 1.0: 9, math.inf: 10}, before) == {0.1: 2, 1.0: 4, math.inf: 4}
    assert bucket_deltas({0.1: 1, 1.0: 1, math.inf: 1}, before) == {0.1: 1, 1.0: 1, math.inf: 1}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed; "
                    ".ci/run installs it")
def test_quantiles_agree_with_prometheus(tmp_path: Path) -> None:
    series, expectations = [], []
    for name, buckets in CASES.items():
        for bound, count in buckets.items():
            le = "+Inf" if math.isinf(bound) else repr(bound)
            series.append({"series": f'h_bucket{{case="{name}",le="{le}"}}', "values": f"{count:g}"})
    for q in (0.5, 0.9, 0.99):
        expectations.append({"expr": f"histogram_quantile({q}, h_bucket)", "eval_time": "0m", "exp_samples": [
            {"labels": f'{{case="{name}"}}', "value": histogram_quantile(q, buckets)} for name, buckets in CASES.items()]})
    rules = tmp_path / "quantiles.test.yml"
    rules.write_text(json.dumps({"tests": [{"interval": "1m", "input_series": series,
                                            "promql_expr_test": expectations}]}))
    result = subprocess.run(["promtool", "test", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
