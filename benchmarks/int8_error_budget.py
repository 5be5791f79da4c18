"""Where static int8 EfficientNet-Lite0 loses top-1 agreement, one error source at a time.

Issue 4 asks for int8 with >= 98% top-1 agreement with fp32 at <= 0.6x its
latency. The compression report measures 96.2%. This script measures where the
loss comes from. From one calibration (the report's: 64 augmented photos),
each row quantizes one source of error and keeps the rest in float:

- the int8 weights;
- the uint8 activations, split in two:
  - "clipped": ReLU6 outputs, range [0, 6];
  - "linear": the residual stream, the pooled features and the input image.

Every row is judged on the report's 500 evaluation photos. If one source on its
own is already below 98%, then no int8 model that quantizes that source can
reach 98%.

Fidelity is the QDQ arithmetic itself: onnxruntime with its graph
optimizations off, so the rows differ only in what is quantized. The shipped
model's figure, with the backend's fused kernels, is in
optimize-efficientnet-lite0.json. Two lines of the ReLU6 row's reasoning come
from the CPU, so its flags are recorded: without VNNI, uint8 x int8 products
are added in saturating int16 pairs, and inferd caps 1x1 weights so that
neighbouring pairs fit (see inferd/optimize/int8.py).

The script also records the fp32 margin of every answer int8 changes, and the
agreement per source photo.

Run: .venv/bin/python benchmarks/int8_error_budget.py  (about 2 min)
Writes benchmarks/results/int8-error-budget-efficientnet-lite0.json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from harness import machine_info
from onnx import numpy_helper

from inferd.io.photos import SAMPLE_PHOTOS
from inferd.optimize import build_eval_set, fidelity, to_fp16
from inferd.optimize._graph import without_dead_nodes
from inferd.optimize.evalset import EvalSet
from inferd.optimize.int8 import StaticQuantization, keep_float
from inferd.package import ModelPackage
from inferd.runtime.devices import cpu_features

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "models" / "efficientnet-lite0"
RESULT = ROOT / "benchmarks" / "results" / "int8-error-budget-efficientnet-lite0.json"
CLIPPING_OPS = ("Clip", "Relu")
DECIDED_MARGIN = 0.03  # fp32 top-1 probability minus the runner-up's, above which an answer counts as decided
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def qdq_predict(model: onnx.ModelProto, eval_set: EvalSet) -> np.ndarray:
    """Logits of `model` computed as its graph says, without onnxruntime's fusions."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    (name, images), = eval_set.batch(0, len(eval_set)).items()  # 500 photos of 224x224: small enough to hold
    return np.concatenate([session.run(None, {name: images[i : i + 50]})[0] for i in range(0, len(images), 50)])


def with_float_weights(quantized: onnx.ModelProto, model: onnx.ModelProto) -> onnx.ModelProto:
    """`quantized` with every int8 weight and int32 bias replaced by the float one of `model`, activations untouched."""
    floats = {init.name: init for init in model.graph.initializer}
    quantized_inits = {init.name for init in quantized.graph.initializer}
    result = onnx.ModelProto()
    result.CopyFrom(quantized)
    replaced: dict[str, str] = {}  # dequantized weight tensor -> float initializer of the same values
    for node in result.graph.node:
        source = node.input[0] if node.input else ""
        if node.op_type == "DequantizeLinear" and source in quantized_inits and source.endswith("_quantized"):
            original = source.removesuffix("_quantized")
            replaced[node.output[0]] = f"{original}/float"
            result.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(floats[original]),
                                                                    f"{original}/float"))
    for node in result.graph.node:
        node.input[:] = [replaced.get(name, name) for name in node.input]
    return without_dead_nodes(result)


def clipped_activations(model: onnx.ModelProto, activations: Collection[str]) -> set[str]:
    """The activations that a ReLU/ReLU6 makes or that only a ReLU/ReLU6 reads (the convolution before it)."""
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    only_clipped = {a for a, ops in readers.items() if ops and ops <= set(CLIPPING_OPS)}
    return {a for a in activations if producers.get(a) in CLIPPING_OPS or a in only_clipped}


def margins(logits: np.ndarray) -> np.ndarray:
    """fp32's top-1 probability minus the runner-up's, per input."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    top = np.sort(shifted / shifted.sum(axis=1, keepdims=True), axis=1)
    return top[:, -1] - top[:, -2]


def main() -> None:
    original = ModelPackage.load(PACKAGE)
    eval_set = build_eval_set(original.manifest, None, 500)
    started = time.perf_counter()
    int8 = StaticQuantization(original, None, samples=64)
    calibration_s = time.perf_counter() - started
    layers = {node.name for node in int8.model.graph.node}
    activations = [c for c in int8.float_candidates() if c not in layers]
    clipped = clipped_activations(int8.model, activations)
    linear = set(activations) - clipped
    full = int8.keeping_float().onnx_model
    float_weights = with_float_weights(full, int8.model)
    rows = {
        "fp16 (for scale: how fragile the set is)": to_fp16(original).onnx_model,
        "int8, everything": full,
        "int8 weights alone": int8.keeping_float(activations).onnx_model,
        "uint8 activations alone": float_weights,
        f"clipped activations alone ({len(clipped)}, ReLU6 outputs)": keep_float(float_weights, int8.model, linear),
        f"linear activations alone ({len(linear)}: residual stream, pooled features, image)":
            keep_float(float_weights, int8.model, clipped),
    }
    reference = qdq_predict(original.onnx_model, eval_set)
    margin = margins(reference)
    decided = margin >= DECIDED_MARGIN
    photo = np.arange(len(eval_set)) % len(SAMPLE_PHOTOS)  # augmented_photos cycles through the photos
    features = set(cpu_features())
    result: dict[str, Any] = {"machine": machine_info() | {"int8_cpu_flags": {f: f in features for f in INT8_FLAGS}},
                              "calibration": "64 augmented scikit-image photos (seed 1); 500 eval photos (seed 0)",
                              "calibration_seconds": round(calibration_s, 1), "rows": {}}
    for name, model in rows.items():
        logits = qdq_predict(model, eval_set)
        same = logits.argmax(1) == reference.argmax(1)
        row: dict[str, Any] = {key: round(value, 4) for key, value in fidelity(reference, logits).items()}
        row["top1_agreement_where_decided"] = round(float(same[decided].mean()), 4)
        row["fp32_margins_of_changed_answers"] = sorted(round(float(m), 4) for m in margin[~same])
        row["top1_agreement_by_photo"] = {p: round(float(same[photo == i].mean()), 3) for i, p in enumerate(SAMPLE_PHOTOS)}
        result["rows"][name] = row
        print(f"{name:80s} agreement {row['top1_agreement']:.3f}  SNR {row['snr_db']:6.2f} dB  "
              f"decided {row['top1_agreement_where_decided']:.3f}", flush=True)
    result["decided"] = {"fp32_margin_at_least": DECIDED_MARGIN, "inputs": int(decided.sum())}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
