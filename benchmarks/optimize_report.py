"""Compression report for the default EfficientNet-Lite0: int8 agreement and latency, palettization size.

Run: .venv/bin/python benchmarks/optimize_report.py  (writes benchmarks/results/optimize-efficientnet-lite0.json)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rich.console import Console

from inferd.bench.compression import render, report
from inferd.optimize import build_eval_set, palettize, quantize_static
from inferd.package import ModelPackage

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "models" / "efficientnet-lite0"
RESULT = ROOT / "benchmarks" / "results" / "optimize-efficientnet-lite0.json"


def main() -> None:
    original = ModelPackage.load(PACKAGE)
    eval_set = build_eval_set(original.manifest, None, 500)
    with tempfile.TemporaryDirectory(prefix="inferd-optimize-bench-") as tmp:
        started = time.perf_counter()
        int8 = quantize_static(original, None, method="minmax", samples=64).save(Path(tmp) / "int8")
        int8_seconds = time.perf_counter() - started
        started = time.perf_counter()
        palette = palettize(original, 4, group_size=16).save(Path(tmp) / "palette4")
        palette_seconds = time.perf_counter() - started
        result = report(original, [int8, palette], eval_set, backends=("onnxruntime", "openvino"), timing_runs=50)
    result["compress_seconds"] = {"int8": round(int8_seconds, 1), "palettize:4:16": round(palette_seconds, 1)}
    result["calibration"] = "64 augmented scikit-image photos (seed 1; the 500 eval images use seed 0)"
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    Console().print(render(result))


if __name__ == "__main__":
    main()
