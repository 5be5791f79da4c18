"""The `inferd` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CAT_LABELS, encode


def inferd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=600)


def test_help_everywhere() -> None:
    for command in ([], ["devices"], ["convert"], ["info"], ["predict"], ["compile"], ["bench"], ["serve"], ["prepare"]):
        result = inferd(*command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout, command


def test_devices_json() -> None:
    result = inferd("devices", "--json")
    assert result.returncode == 0
    assert {d["backend"] for d in json.loads(result.stdout)} >= {"openvino", "onnxruntime"}


def test_info(default_package: Path) -> None:
    result = inferd("info", str(default_package))
    assert result.returncode == 0
    for words in ("efficientnet-lite0", "1000", "fidelity", "center_crop"):
        assert words in result.stdout


def test_predict_json_lines(default_package: Path, tmp_path: Path) -> None:
    from skimage import data

    cat, coffee = tmp_path / "chelsea.png", tmp_path / "coffee.jpg"
    cat.write_bytes(encode(data.chelsea(), "PNG"))
    coffee.write_bytes(encode(data.coffee(), "JPEG"))
    result = inferd("predict", str(default_package), str(cat), str(coffee), "--json", "-k", "5")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {p["label"] for p in lines[0]["predictions"]} & CAT_LABELS
    assert {p["label"] for p in lines[1]["predictions"]} & {"espresso", "cup"}


def test_compile_reports_cached_second_load(default_package: Path) -> None:
    result = inferd("compile", str(default_package), "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    assert "second" in result.stdout and "True" in result.stdout


def test_user_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = inferd("info", str(tmp_path / "empty"))
    assert result.returncode == 2
    assert "manifest.json is missing" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("option", "value", "complaint"), [
    ("--body-timeout", "0", "greater than 0"), ("--max-batch-size", "0", "greater than or equal to 1"),
    ("--poll-interval", "-1", "greater than 0"), ("--grpc-port", "70000", "less than or equal to 65535"),
    ("--max-queue-size", str(2**64), "less than or equal to 65536"), ("--head-timeout", "nan", "a finite number"),
])
def test_serve_names_the_option_out_of_range(default_repository: Path, option: str, value: str, complaint: str) -> None:
    result = inferd("serve", str(default_repository), option, value)
    assert result.returncode == 2, result.stderr[-500:]
    assert f"error: {option}: Input should be {complaint}" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_busy_grpc_port_before_loading_models(default_repository: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = inferd("serve", str(default_repository), "--port", "0", "--grpc-port", str(port))
    assert result.returncode == 2, result.stderr[-500:]
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "--grpc-port" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
