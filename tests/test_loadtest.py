"""`inferd loadtest` against a real server on loopback (issue 20.5, 20.6): every protocol it speaks, its files,
its errors and its plot. Windows are short (300 ms) so that the file stays fast; stability is not asserted,
since a shared machine decides it, but every level must report whether it was stable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferd.bench.load.windows import within
from tests.conftest import LiveServer, encode

SHORT = ["--concurrency", "1,2", "--window-ms", "300", "--max-windows", "4"]
KEY = "loadtest-key"  # the server wants one, so every run also proves the key goes with each request


def loadtest(*args: str, key: str = KEY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", "loadtest", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "INFERD_API_KEY": key})


@pytest.fixture(scope="module")
def live(default_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=default_repository, grpc_port=0, api_key=KEY)) as server:
        yield server


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        (folder / f"{name}.jpg").write_bytes(encode(getattr(data, name)(), "JPEG"))
    return folder


def _grpc_address(live: LiveServer) -> str:
    return f"127.0.0.1:{live.app.state.grpc_port}"


@pytest.mark.parametrize("case", ["binary", "json", "grpc", "images-rest"])
def test_sweep_reports_every_level(live: LiveServer, photos: Path, tmp_path: Path, case: str) -> None:
    args = {
        "binary": [live.url, "--plot", str(tmp_path / "curve.png")],  # efficientnet-lite0, the first model listed
        "json": [live.url, "--model", "minilm-l6", "--format", "json"],  # texts as V2 JSON BYTES
        "grpc": [_grpc_address(live), "--protocol", "grpc"],
        "images-rest": [live.url, "--images", str(photos), "--route", "rest"],  # multipart to /predict
    }[case]
    run = loadtest(*args, *SHORT, "--json", str(tmp_path / "r.json"), "--csv", str(tmp_path / "r.csv"))
    assert run.returncode == 0, run.stderr + run.stdout

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["target"]["protocol"] == ("grpc" if case == "grpc" else "http")
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        latency = level["latency_ms"]
        assert level["throughput_rps"] > 0
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
        assert level["errors"] == 0 and set(level["outcomes"]) == {"200"}
        assert 3 <= level["windows"] <= 4 and isinstance(level["stable"], bool)
        assert level["client_cpu_s"] > 0 and level["client_cpu_ms_per_request"] > 0
        assert 0 < level["client_cpu_share"] <= 1
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2]
    assert all(float(r["throughput_rps"]) > 0 and float(r["p50_ms"]) <= float(r["p99_ms"]) for r in rows)
    assert all(r["errors"] == "0" and r["stable"] in ("True", "False") for r in rows)
    assert "req/s" in run.stdout and "client CPU" in run.stdout

    if case == "binary":
        png = (tmp_path / "curve.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        page = (tmp_path / "curve.html").read_text()
        assert "data:image/png;base64," in page and page.count("<tr>") == 3  # the header and one row per level


def test_refused_requests_are_counted_as_errors(live: LiveServer, tmp_path: Path) -> None:
    inputs = tmp_path / "wrong.npz"
    np.savez(inputs, image=np.zeros((1, 3, 100, 100), np.float32))  # the model takes 224x224
    run = loadtest(live.url, "--input", str(inputs), "--concurrency", "1", "--window-ms", "300", "--max-windows", "3",
                   "--json", str(tmp_path / "r.json"))
    assert run.returncode == 2
    assert "no request succeeded" in run.stderr and "224" in run.stderr  # the server's own reason is shown
    (level,) = json.loads((tmp_path / "r.json").read_text())["levels"]
    assert level["throughput_rps"] == 0 and level["errors"] == level["requests"] > 0
    assert set(level["outcomes"]) == {"400"}


@pytest.mark.parametrize("args, message", [
    (["http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9"),
    (["not-a-url"], "give the server's address"),
    (["{url}", "--model", "no-such-model"], "has no model 'no-such-model'; it serves efficientnet-lite0, minilm-l6"),
    (["{grpc}", "--protocol", "grpc", "--model", "no-such-model"], "has no model 'no-such-model'"),
    (["{url}"], "refused the API key (401): give the right one with --api-key or INFERD_API_KEY"),
])
def test_user_errors_exit_2_with_one_line(live: LiveServer, args: list[str], message: str) -> None:
    filled = [a.format(url=live.url, grpc=_grpc_address(live)) for a in args]
    run = loadtest(*filled, key="wrong" if "refused the API key" in message else KEY)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_stability_bound() -> None:
    assert within([100.0, 104.0, 96.0], 0.05)
    assert not within([100.0, 112.0, 96.0], 0.05)
    assert within([0.0, 0.0, 0.0], 0.1) and within([None, None, None], 0.1)
    assert not within([None, 10.0, 10.0], 0.1)
