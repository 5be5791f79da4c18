"""`inferd optimize` judges each output by what it holds, and will not write a model it destroyed.

Real models from other projects (tests/zoo.py): a YOLOv8 detector whose one
output holds boxes beside class scores, and the PP-OCRv4 text detector whose
output is a probability map. Run as a user runs the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inferd.package import ModelPackage
from tests.test_cli import inferd
from tests.zoo import zoo_file

# PP-OCR's preprocessing: ImageNet mean and standard deviation on pixels / 255
PPOCR = [flag for std in (0.229, 0.224, 0.225) for flag in ("--scale", f"{1 / (255 * std):.8f}")] + [
    flag for mean, std in ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225)) for flag in ("--bias", f"{-mean / std:.6f}")]


def strict_json(path: Path) -> Any:
    return json.loads(path.read_text(), parse_constant=lambda word: pytest.fail(f"{word} is not JSON"))


def converted(source: Path, target: Path, *flags: str) -> Path:
    result = inferd("convert", str(source), "-o", str(target), "--image", *flags)
    assert result.returncode == 0, result.stderr
    return target


def calibration_photos(package: Path, target: Path, count: int = 8) -> Path:
    """A few augmented photos as an .npz keyed by the input name: calibration that stays quick."""
    from inferd.io import image_input
    from inferd.optimize import augmented_photos

    spec = image_input(ModelPackage.load(package).manifest)
    np.savez(target, **{spec.name: np.stack(augmented_photos(spec, count, seed=1))})
    return target


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo-packages")
    return {
        "detector": converted(zoo_file("detector"), root / "detector", "--scale", str(1 / 255),
                              "--input-shape", "1,3,320,320"),
        "text-det": converted(zoo_file("text-det"), root / "text-det", *PPOCR, "--input-shape", "1,3,320,320",
                              "--opset", "13"),  # the file's opset 12 is too old for pruning
    }


def test_detector_int8_report_shows_the_score_channels_collapse(packages: dict[str, Path], tmp_path: Path) -> None:
    """Boxes in pixels dominate the whole output's SNR and cosine; the class scores are judged on their own."""
    output, report = tmp_path / "int8", tmp_path / "report.json"
    result = inferd("optimize", str(packages["detector"]), "-o", str(output), "--pipeline", "int8",
                    "--calibration", str(calibration_photos(packages["detector"], tmp_path / "cal.npz")),
                    "--report-json", str(report), "--eval-samples", "16", "-b", "onnxruntime")
    rows = strict_json(report)["rows"]
    (judged,) = rows[1]["outputs"]
    m = judged["metrics"]
    assert judged["name"] == "output0" and judged["kind"] == "scores" and "channels 4-21 of axis 1" in judged["why"]
    assert "top1_agreement" not in m and "top5_overlap" not in m  # not a classifier
    assert m["snr_db"] > 25 and m["cosine"] > 0.999  # what the old report showed: looks fine
    assert m["scores_snr_db"] < 10 and m["crossed_ratio"] > 0.5 and m["peak"] < m["peak_reference"]
    assert not rows[1]["usable"] and any("score channels" in line for line in rows[1]["below_floor"])
    # below the floor: refused, loudly, with nothing written
    assert result.returncode == 2 and "below the floor" in result.stderr and "--force-unusable" in result.stderr
    assert not output.exists()


def test_text_detector_probability_map_counts_threshold_crossings(packages: dict[str, Path], tmp_path: Path) -> None:
    """Pruning a tenth of the weights moves some text pixels across 0.5, which is what the report counts."""
    output, report = tmp_path / "pruned", tmp_path / "report.json"
    result = inferd("optimize", str(packages["text-det"]), "-o", str(output), "--pipeline", "prune:0.1",
                    "--report", "--report-json", str(report), "--eval-samples", "16", "-b", "onnxruntime")
    assert report.is_file(), result.stderr  # written whether or not the pruned model clears the floor
    rows = strict_json(report)["rows"]
    assert [row["compression"] for row in rows] == ["none", "prune"]
    for row in rows:
        (judged,) = row["outputs"]
        assert judged["kind"] == "probabilities" and "lies in [0, 1]" in judged["why"]
        assert {"relative_error", "snr_db", "cosine", "crossed_ratio", "above_threshold"} <= judged["metrics"].keys()
        assert "top1_agreement" not in judged["metrics"]
    exact, pruned = rows[0]["outputs"][0]["metrics"], rows[1]["outputs"][0]["metrics"]
    assert exact["crossed"] == 0 and exact["snr_db"] is None and exact["above_threshold"] > 1000  # text is found
    assert pruned["threshold"] == 0.5 and pruned["above_threshold"] == exact["above_threshold"]
    assert 0 < pruned["crossed_ratio"] < 1
    assert pruned["crossed_ratio"] == pytest.approx(pruned["crossed"] / pruned["above_threshold"])
    assert "crossed 0.5" in result.stdout  # the table's column for it


def test_floor_refuses_a_destroyed_classifier_and_writes_it_when_forced(default_package: Path, tmp_path: Path) -> None:
    """The README once chained prune:0.5 as a recipe: the cat became an iPod, and the command exited 0."""
    output = tmp_path / "pruned"
    refused = inferd("optimize", str(default_package), "-o", str(output), "--pipeline", "prune:0.5")
    assert refused.returncode == 2 and not output.exists()
    assert "below the floor" in refused.stderr and "top-1 agreement" in refused.stderr
    forced = inferd("optimize", str(default_package), "-o", str(output), "--pipeline", "prune:0.5", "--force-unusable")
    assert forced.returncode == 0, forced.stderr
    assert "top-1 agreement" in forced.stderr  # still told, loudly
    assert ModelPackage.load(output).manifest.compression[-1].kind == "prune"
