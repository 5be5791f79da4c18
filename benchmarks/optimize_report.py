"""Compression report for the default EfficientNet-Lite0 against issue 4's targets, in one run.

int8 (static, calibrated on 64 augmented photos) as a whole, with the stem and
first depthwise layer kept in float, and as `--max-drop 2` makes it (the guard
judges on 300 other augmented photos, so the 500 it is reported on are unseen);
4-bit grouped palettization and fp16: size, latency on each backend and on the
default configuration ("auto"), and fidelity on 500 augmented photos.

Run: .venv/bin/python benchmarks/optimize_report.py  (writes benchmarks/results/optimize-efficientnet-lite0.json)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from inferd.bench.compression import render, report, report_json
from inferd.optimize import EvalSet, build_eval_set, compress, palettize, to_fp16
from inferd.optimize.calibration import single_image_input
from inferd.optimize.int8 import StaticQuantization
from inferd.optimize.photos import augmented_photos
from inferd.package import ModelPackage

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "models" / "efficientnet-lite0"
RESULT = ROOT / "benchmarks" / "results" / "optimize-efficientnet-lite0.json"
BACKENDS = ("auto", "onnxruntime", "openvino")


def int8_targets(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """The three int8 targets, which one int8 configuration has to meet together."""
    fastest_fp32 = min(fp32["latency_ms"][b] for b in ("onnxruntime", "openvino"))
    fastest_int8 = min(int8["latency_ms"][b] for b in ("onnxruntime", "openvino"))
    top1 = next(o["metrics"]["top1_agreement"] for o in int8["outputs"] if o["kind"] == "classifier")
    return {
        "top1_agreement": {"measured": top1, "target": ">= 0.98", "met": top1 >= 0.98},
        "vs_default_latency": {"measured": round(fastest_int8 / fp32["latency_ms"]["auto"], 3), "target": "<= 0.85",
                               "met": fastest_int8 / fp32["latency_ms"]["auto"] <= 0.85},
        "vs_fp32_latency": {"measured": round(fastest_int8 / fastest_fp32, 3), "target": "<= 0.6",
                            "met": fastest_int8 / fastest_fp32 <= 0.6},
    }


def acceptance(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 4's EfficientNet targets, each with the measured figure beside it."""
    fp32, int8, guarded, palette = rows[0], rows[1], rows[3], rows[4]  # the order main() compresses in
    return {
        "int8": int8_targets(fp32, int8),
        "int8_max_drop_2": int8_targets(fp32, guarded),
        "palettize_4bit_size_ratio": {"measured": round(palette["size_bytes"] / fp32["size_bytes"], 3),
                                      "target": "<= 0.2", "met": palette["size_bytes"] / fp32["size_bytes"] <= 0.2},
    }


def main() -> None:
    original = ModelPackage.load(PACKAGE)
    eval_set = build_eval_set(original.manifest, None, 500)
    spec = single_image_input(original.manifest)
    guard_set = EvalSet({spec.name: np.stack(augmented_photos(spec, 300, seed=2))})
    first_two = [n.name for n in original.onnx_model.graph.node if n.op_type == "Conv"][:2]
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-optimize-bench-") as tmp:
        packages = []
        started = time.perf_counter()
        int8 = StaticQuantization(original, None, samples=64)  # one calibration serves both int8 rows
        seconds["int8 calibration"] = round(time.perf_counter() - started, 1)
        for name, make in (
            ("int8", lambda: int8.keeping_float()),
            ("int8, stem + first depthwise float", lambda: int8.keeping_float(first_two)),
            ("int8 --max-drop 2", lambda: compress(original, "int8", max_drop=2.0, eval_data=guard_set)),
            ("palettize:4:16", lambda: palettize(original, 4, group_size=16)),
            ("fp16", lambda: to_fp16(original)),
        ):
            started = time.perf_counter()
            packages.append(make().save(Path(tmp) / name.replace(" ", "_").replace(",", "").replace(":", "-")))
            seconds[name] = round(time.perf_counter() - started, 1)
        result = report(original, packages, eval_set, backends=BACKENDS, timing_runs=50)
    result["compress_seconds"] = seconds
    result["calibration"] = ("64 augmented scikit-image photos (seed 1; the 500 eval images use seed 0); "
                             "--max-drop 2 calibrates on 200 and judges on 300 (seed 2)")
    result["acceptance"] = acceptance(result["rows"])
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(report_json(result))
    Console(width=160).print(render(result))
    print(json.dumps(result["acceptance"], indent=2))


if __name__ == "__main__":
    main()
