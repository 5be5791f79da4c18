"""int8: weight-only (per-channel symmetric, DequantizeLinear on the weights) and static (QDQ, calibrated).

Weight-only shrinks the package 4x with float compute, so it is safe for any
model; static int8 also quantizes activations and is what VNNI CPUs run fast,
at the price of needing representative calibration inputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from inferd.manifest import CompressionStep
from inferd.optimize._graph import (
    Decoder,
    densify,
    derive,
    ensure_not_compressed,
    find_weights,
    initializer_bytes,
    replace_initializers,
    require_opset,
)
from inferd.optimize.calibration import FeedReader, calibration_feeds
from inferd.optimize.errors import OptimizeError
from inferd.package import ModelPackage

WEIGHTS_KIND = "int8-weights"
STATIC_KIND = "int8"
Method = Literal["minmax", "entropy", "percentile"]
METHODS: tuple[Method, ...] = ("minmax", "entropy", "percentile")


def quantize_weights(package: ModelPackage, *, exclude: Collection[str] = ()) -> ModelPackage:
    """New package whose layer weights are int8 with one float scale per output channel."""
    for kind in (WEIGHTS_KIND, STATIC_KIND):
        ensure_not_compressed(package, kind)
    model = densify(package.onnx_model)
    require_opset(model, 13, "per-channel int8 weights")
    decoder = Decoder("int8")
    weights = find_weights(model, exclude=exclude)
    for weight in weights:
        moved = np.moveaxis(weight.array, weight.output_axis, 0)
        scale = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1) / 127
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * weight.array.ndim
        shape[weight.output_axis] = -1
        q = np.clip(np.round(weight.array / scale.reshape(shape)), -127, 127).astype(np.int8)
        base = f"{weight.name}/int8"
        decoder.node(
            "DequantizeLinear",
            [decoder.tensor(f"{base}/values", q), decoder.tensor(f"{base}/scale", scale)],
            weight.name, axis=weight.output_axis,
        )
    encoded = replace_initializers(model, {w.name for w in weights}, decoder.initializers, decoder.nodes)
    prefixes = tuple(f"{w.name}/int8/" for w in weights)
    step = CompressionStep(
        kind=WEIGHTS_KIND,
        parameters={"scheme": "per-channel symmetric"},
        details={
            "layers": len(weights),
            "kept_layers": sorted(exclude),
            "weight_bytes_before": sum(w.array.nbytes for w in weights),
            "weight_bytes_after": sum(i.ByteSize() for i in encoded.graph.initializer if i.name.startswith(prefixes)),
            "initializer_bytes_before": initializer_bytes(model),
            "initializer_bytes_after": initializer_bytes(encoded),
        },
    )
    return derive(package, encoded, step, precision="mixed")


def quantize_static(
    package: ModelPackage,
    calibration: str | os.PathLike[str] | None = None,
    *,
    method: Method = "minmax",
    samples: int = 200,
    exclude: Collection[str] = (),
) -> ModelPackage:
    """New package in QDQ format: int8 weights per channel, uint8 activations calibrated on `calibration`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    for kind in (WEIGHTS_KIND, STATIC_KIND):
        ensure_not_compressed(package, kind)
    if method not in METHODS:
        raise OptimizeError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    feeds = calibration_feeds(package.manifest, calibration, samples)
    model = densify(package.onnx_model)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    # The entropy calibrator prints its progress to stdout, which is the CLI's result channel.
    with tempfile.TemporaryDirectory(prefix="inferd-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(model, str(source))
        ort_quantize_static(
            str(source), str(target), FeedReader(feeds),
            quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=calibrate,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"CalibTensorRangeSymmetric": False, "CalibMovingAverage": False},
        )
        quantized = onnx.load(str(target))
    step = CompressionStep(
        kind=STATIC_KIND,
        parameters={"method": method, "format": "QDQ", "per_channel": True,
                    "calibration": str(calibration) if calibration else "sample photos",
                    "samples": len(feeds)},
        details={
            "kept_layers": sorted(exclude),
            "initializer_bytes_before": initializer_bytes(model),
            "initializer_bytes_after": initializer_bytes(quantized),
        },
    )
    return derive(package, quantized, step, precision="int8")
