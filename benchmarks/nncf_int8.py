"""Does NNCF give OpenVINO a faster or more accurate int8 EfficientNet-Lite0 than inferd's QDQ model?

Issue 4 asks to measure it rather than assume it. Both int8 models are
calibrated on the same 64 augmented photos and judged on the same 500 (the
compression report's sets): top-1 agreement and SNR against fp32, and median
batch-1 latency in interleaved rounds, one compiled model held at a time.
NNCF runs twice: with its default overflow fix (first layer only) and with it
on every layer, since this CPU lacks VNNI and multiplies uint8 by int8 in
saturating int16 pairs.

Needs `pip install nncf` (not an inferd dependency).
Run: .venv/bin/python benchmarks/nncf_int8.py  (writes benchmarks/results/nncf-int8-efficientnet-lite0.json)
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inferd.bench.compression import report_json, timed_calls
from inferd.optimize import build_eval_set, fidelity, predict
from inferd.optimize.calibration import calibration_feeds
from inferd.optimize.int8 import StaticQuantization
from inferd.package import ModelPackage
from inferd.runtime import load

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "models" / "efficientnet-lite0"
RESULT = ROOT / "benchmarks" / "results" / "nncf-int8-efficientnet-lite0.json"
OV_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def nncf_models(original: ModelPackage, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """OpenVINO models quantized by NNCF, by row name, with the seconds each took."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    assert original.path is not None
    name = original.manifest.inputs[0].name
    dataset = nncf.Dataset([feed[name] for feed in feeds])
    models = {}
    for row, fix in (("nncf (overflow fix: first layer)", OverflowFix.FIRST_LAYER),
                     ("nncf (overflow fix: every layer)", OverflowFix.ENABLE)):
        started = time.perf_counter()
        quantized = nncf.quantize(ov.Core().read_model(str(original.path / "model.onnx")), dataset,
                                  subset_size=len(feeds), advanced_parameters=AdvancedQuantizationParameters(
                                      overflow_fix=fix))
        models[row] = (quantized, round(time.perf_counter() - started, 1))
    return models


Runner = Callable[[np.ndarray], np.ndarray]  # one batch of images in, logits out


def inferd_runner(package: ModelPackage, backend: str) -> Runner:
    compiled = load(package, backend=backend)
    name, output = package.manifest.inputs[0].name, package.manifest.outputs[0].name
    return lambda images: compiled.predict({name: images})[output]


def openvino_runner(model: Any) -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", OV_CONFIG)
    return lambda images: compiled({0: images})[0]


def main(rounds: int = 3, runs_per_round: int = 20) -> None:
    original = ModelPackage.load(PACKAGE)
    eval_set = build_eval_set(original.manifest, None, 500)
    feeds = calibration_feeds(original.manifest, None, 64)
    reference = predict(original.onnx_model, eval_set)
    images = eval_set.batch(0, len(eval_set))[original.manifest.inputs[0].name]

    started = time.perf_counter()
    quantization = StaticQuantization(original, None, samples=64)
    seconds = {"inferd int8 (QDQ)": round(time.perf_counter() - started, 1)}
    with tempfile.TemporaryDirectory(prefix="inferd-nncf-") as tmp:
        qdq = quantization.keeping_float().save(Path(tmp) / "qdq")
        # Each factory compiles its model when called, so only the model being timed holds a thread pool.
        factories: dict[str, Callable[[], Runner]] = {
            f"{label} {backend}": partial(inferd_runner, package, backend)
            for label, package in (("fp32", original), ("inferd int8 (QDQ)", qdq))
            for backend in ("onnxruntime", "openvino")
        }
        for label, (model, took) in nncf_models(original, list(feeds)).items():
            seconds[label] = took
            factories[f"{label} openvino"] = partial(openvino_runner, model)
        rows: dict[str, dict[str, Any]] = {}
        times: dict[str, list[float]] = {row: [] for row in factories}
        for round_index in range(rounds):
            for row, factory in factories.items():
                run = factory()
                if round_index == 0:
                    outputs = np.concatenate([run(images[i : i + 1]) for i in range(len(images))])
                    judged = fidelity(reference, outputs)
                    rows[row] = {"top1_agreement": judged["top1_agreement"], "snr_db": round(judged["snr_db"], 2)}
                times[row] += timed_calls(partial(run, images[:1]), runs_per_round)
    for row, values in times.items():
        rows[row]["latency_ms"] = round(statistics.median(values), 3)
    result = {
        "model": original.manifest.name, "eval_samples": len(eval_set), "calibration_samples": len(feeds),
        "calibration_method": quantization.parameters["method"], "rows": rows, "quantize_seconds": seconds,
        "cpu": platform.processor() or platform.machine(),
        "versions": {module: __import__(module).__version__ for module in ("nncf", "openvino", "onnxruntime")},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(report_json(result))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
