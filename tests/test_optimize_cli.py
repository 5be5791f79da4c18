"""`inferd optimize` on the default model, run as a user runs it: the package it writes, its report, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inferd.package import ModelPackage
from tests.test_cli import inferd


def test_palettized_package_and_its_report(default_package: Path, tmp_path: Path) -> None:
    """4-bit palettization is below the floor on this model (README), so it is written only when forced."""
    output, report = tmp_path / "pal4", tmp_path / "report.json"
    result = inferd("optimize", str(default_package), "-o", str(output), "--pipeline", "palettize:4:16",
                    "--report", "--report-json", str(report), "--eval-samples", "16", "-b", "onnxruntime",
                    "--force-unusable")
    assert result.returncode == 0, result.stderr
    small, original = ModelPackage.load(output), ModelPackage.load(default_package)
    assert small.manifest.compression[-1].kind == "palettize"
    assert small.manifest.compression[-1].parameters["rounding"] == "GPTQ on 64 calibration samples"  # sample photos
    assert small.size_bytes() <= 0.2 * original.size_bytes()
    rows = json.loads(report.read_text(), parse_constant=lambda word: pytest.fail(f"{word} is not JSON"))["rows"]
    assert [row["compression"] for row in rows] == ["none", "palettize"]
    (exact,), (logits,) = rows[0]["outputs"], rows[1]["outputs"]
    assert exact["name"] == logits["name"] == "logits" and logits["kind"] == "classifier"
    assert exact["metrics"]["snr_db"] is None  # identical outputs: an infinite SNR, written as null
    assert exact["metrics"]["top1_agreement"] == 1.0 and rows[0]["usable"] and rows[1]["size_ratio"] >= 5
    assert {"top5_overlap", "cosine", "snr_db", "relative_error"} <= logits["metrics"].keys()
    assert rows[1]["latency_ms"]["onnxruntime"] > 0
    assert "compression vs uncompressed (16 samples" in result.stdout


def test_pruned_then_palettized(default_package: Path, tmp_path: Path) -> None:
    """Pruned weights are not GPTQ's to refine, so palettization falls back to the nearest entry and says so."""
    output = tmp_path / "small"
    result = inferd("optimize", str(default_package), "-o", str(output), "--pipeline", "prune:0.5,palettize:4:16",
                    "--force-unusable")  # it destroys the model (test_optimize_report.py); the fallback is tested here
    assert result.returncode == 0, result.stderr
    small = ModelPackage.load(output)
    assert [step.kind for step in small.manifest.compression] == ["prune", "palettize"]
    assert small.manifest.compression[-1].parameters["rounding"].startswith("nearest entry (GPTQ leaves pruned")
    assert small.size_bytes() <= 0.2 * ModelPackage.load(default_package).size_bytes()


def test_existing_output_is_not_overwritten(default_package: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    result = inferd("optimize", str(default_package), "-o", str(tmp_path / "taken"), "--pipeline", "fp16")
    assert result.returncode == 2 and "--force" in result.stderr


def test_bad_pipelines_say_what_to_fix(default_package: Path, tmp_path: Path) -> None:
    for pipeline, words in (("palettize:3", "2, 4, 6, 8 bits"), ("prune:1.5", "sparsity"), ("gzip", "unknown compression")):
        result = inferd("optimize", str(default_package), "-o", str(tmp_path / "out"), "--pipeline", pipeline)
        assert result.returncode == 2 and words in result.stderr, (pipeline, result.stderr)
        assert not (tmp_path / "out").exists()


def test_missing_calibration_folder(default_package: Path, tmp_path: Path) -> None:
    result = inferd("optimize", str(default_package), "-o", str(tmp_path / "out"), "--pipeline", "int8",
                    "--calibration", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "does not exist" in result.stderr
