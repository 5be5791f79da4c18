"""int8: weight-only (per-channel symmetric, DequantizeLinear on the weights) and static (QDQ, calibrated).

Weight-only shrinks the package 4x with float compute, so it is safe for any
model; static int8 also quantizes activations and is what VNNI CPUs run fast,
at the price of needing representative calibration inputs.

Static int8 keeps onnxruntime's QDQ graph and activation ranges but re-rounds
its Conv/Gemm weights (`inferd.optimize.rounding` says why and how).

Layers and activations to keep in float (`exclude`, or the accuracy guard's
choice) are cut out of one calibrated model afterwards rather than left out of
the calibration, so the guard's trials cost a graph edit, not a calibration
each. For that the quantizer keeps the Relu and Clip nodes its QDQ form could
drop: a layer switched back to float must still see its input clipped. The guard
needs activations as well as layers: on EfficientNet-Lite0, with all 50 weight
layers in float, the uint8 activations alone still changed 3.3% of top-1 answers.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
from onnxruntime.quantization import quantize_static as ort_quantize_static
from onnxruntime.quantization.calibrate import HistogramCollector, TensorsData, create_calibrator, save_tensors_data

from inferd.manifest import CompressionStep
from inferd.optimize._graph import (
    Decoder,
    densify,
    derive,
    ensure_not_compressed,
    find_weights,
    initializer_bytes,
    layer_names,
    replace_initializers,
    require_opset,
    without_dead_nodes,
)
from inferd.optimize.calibration import FeedReader, Feeds, calibration_feeds
from inferd.optimize.errors import OptimizeError
from inferd.optimize.progress import task
from inferd.optimize.rounding import refine_weights
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
    method: Method = "percentile",
    samples: int = 200,
    exclude: Collection[str] = (),
) -> ModelPackage:
    """New package in QDQ format: int8 weights per channel, uint8 activations calibrated on `calibration`."""
    return StaticQuantization(package, calibration, method=method, samples=samples).keeping_float(exclude)


_CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile}
# onnxruntime's defaults, except where they defeat the method: its entropy search
# over 128 bins for 128 levels has one candidate, the full range, so "entropy"
# came out as min-max; TensorRT's 2048 bins give the search room. Ranges stay
# asymmetric, as uint8 activations are.
_CALIBRATOR_OPTIONS: dict[Method, dict[str, Any]] = {
    "minmax": {"symmetric": False},
    "entropy": {"symmetric": False, "num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"symmetric": False, "num_bins": 2048, "percentile": 99.99},
}


def activation_ranges(model_path: Path, feeds: Sequence[Feeds], method: Method, workdir: Path) -> TensorsData:
    """Every float tensor's calibrated range, computed as `method` says, holding one sample's tensors at a time.

    onnxruntime's calibrator keeps every intermediate tensor of every sample it
    is handed until it builds its histograms (tens of GB for a 736x736 text
    detector). It merges histograms across calls, so handing it one sample per
    call bounds the memory, but its bins would then take their width from the
    first sample. So the range of every tensor over all samples is measured
    first (min-max calibration, one sample at a time, cheap), and the histograms
    start out spanning it: the ranges come out as onnxruntime computes them from
    all samples at once.
    """
    ranges = _minmax(model_path, feeds, workdir, "calibrating: activation ranges" if method == "minmax" else
                     "calibrating: activation ranges (pass 1 of 2)")
    if method == "minmax":
        return ranges
    calibrator = _calibrator(model_path, method, workdir / "histograms.onnx")
    collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                   num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                   percentile=calibrator.percentile, scenario=calibrator.scenario)
    for name, data in ranges.items():
        # the entry onnxruntime's HistogramCollector.collect_value makes from a first batch holding every sample
        low, high = (np.asarray(value, dtype=np.float32).reshape(-1)[0] for value in data.range_value)
        threshold = np.array(max(abs(low), abs(high)), dtype=np.float32)
        hist, edges = np.histogram(np.zeros(0, np.float32), calibrator.num_bins,
                                   range=(-threshold, threshold))  # type: ignore[arg-type]  # float32, as onnxruntime
        collector.histogram_dict[name] = (hist, edges, low, high, threshold)
    calibrator.collector = collector
    _collect(calibrator, feeds, "calibrating: activation histograms (pass 2 of 2)")
    return calibrator.compute_data()


def _minmax(model_path: Path, feeds: Sequence[Feeds], workdir: Path, description: str) -> TensorsData:
    """Min-max ranges, with the calibrator (and its session's memory) gone when they are returned."""
    calibrator = _calibrator(model_path, "minmax", workdir / "minmax.onnx")
    _collect(calibrator, feeds, description)
    return calibrator.compute_data()


def _calibrator(model_path: Path, method: Method, augmented: Path) -> Any:
    """onnxruntime's calibrator, whose session runs without the CPU memory arena: the arena would keep the peak of
    a calibration run (every tensor of a sample) for the session's life, a gigabyte at 736x736."""
    calibrator = create_calibrator(model_path, augmented_model_path=str(augmented),
                                   calibrate_method=_CALIBRATORS[method], extra_options=_CALIBRATOR_OPTIONS[method])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's own session
    options.enable_cpu_mem_arena = False
    calibrator.infer_session = ort.InferenceSession(str(augmented), options, providers=calibrator.execution_providers)
    return calibrator


def _collect(calibrator: Any, feeds: Sequence[Feeds], description: str) -> None:
    advance = task(description, len(feeds))
    for index in range(len(feeds)):
        calibrator.collect_data(FeedReader(feeds, index, index + 1))
        advance(1)


class StaticQuantization:
    """One calibration of a package, from which packages with any layers or activations kept in float are cut.

    Calibrating (running the model over the calibration set, ranges, GPTQ) takes
    30 to 140 s on EfficientNet-Lite0, and the accuracy guard asks for a package
    per candidate. Keeping a layer in float needs no new calibration: the layer
    reads the float tensors its QDQ pairs were made from (see `keep_float`), as
    the activation ranges and the other layers' weights do not depend on it.
    """

    def __init__(
        self,
        package: ModelPackage,
        calibration: str | os.PathLike[str] | None = None,
        *,
        method: Method = "percentile",
        samples: int = 200,
    ) -> None:
        for kind in (WEIGHTS_KIND, STATIC_KIND):
            ensure_not_compressed(package, kind)
        if method not in METHODS:
            raise OptimizeError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
        feeds = calibration_feeds(package.manifest, calibration, samples)
        self.package = package
        self.model = densify(package.onnx_model)
        # The entropy calibrator prints its progress to stdout, which is the CLI's result channel.
        with tempfile.TemporaryDirectory(prefix="inferd-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            source, target, ranges = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx", Path(tmp) / "ranges.json"
            onnx.save_model(self.model, str(source))
            save_tensors_data(activation_ranges(source, feeds, method, Path(tmp)), ranges)
            ort_quantize_static(
                str(source), str(target), None, calibration_cache_path=ranges,
                quant_format=QuantFormat.QDQ, per_channel=True, calibrate_method=_CALIBRATORS[method],
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                extra_options={"QDQKeepRemovableActivations": True},
            )
            self.quantized = _float_graph_outputs(onnx.load(str(target)))
        self.refined = refine_weights(self.quantized, self.model, feeds)
        self.parameters = {"method": method, "format": "QDQ", "per_channel": True,
                           "calibration": str(calibration) if calibration else "sample photos",
                           "samples": len(feeds), "weights": "GPTQ, no int16 overflow in uint8 x int8 pairs"}

    def float_candidates(self) -> list[str]:
        """What `keeping_float` accepts: the quantized layers (node names), then the activations (tensor names)
        that enter the graph as uint8 through their own quantize/dequantize pair."""
        initializers = {init.name for init in self.quantized.graph.initializer}
        quantized_nodes = {node.name for node in self.quantized.graph.node}
        layers = [layer for layer in layer_names(self.model) if layer in quantized_nodes]
        activations = [node.input[0] for node in self.quantized.graph.node
                       if node.op_type == "QuantizeLinear" and node.input[0] not in initializers]
        return layers + activations

    def keeping_float(self, names: Collection[str] = ()) -> ModelPackage:
        """The quantized package with the layers (node names) and activations (tensor names) in `names` in float."""
        quantized = keep_float(self.quantized, self.model, names)
        layers = {node.name for node in self.model.graph.node}
        step = CompressionStep(
            kind=STATIC_KIND,
            parameters=dict(self.parameters),
            details={
                "kept_layers": sorted(set(names) & layers),
                "kept_activations": sorted(set(names) - layers),
                "refined_layers": len(set(self.refined) - set(names)),
                "initializer_bytes_before": initializer_bytes(self.model),
                "initializer_bytes_after": initializer_bytes(quantized),
            },
        )
        return derive(self.package, quantized, step, precision="int8")


def keep_float(quantized: onnx.ModelProto, model: onnx.ModelProto, names: Collection[str]) -> onnx.ModelProto:
    """Copy of the QDQ model `quantized` in which the layers and activations in `names` stay float.

    A layer (node name) reads float inputs again: the float weights and biases of
    `model` (the float model it was quantized from) and, for activations, what
    went into their QuantizeLinear. An activation (tensor name) skips its uint8
    round trip for every reader. Quantize/dequantize pairs that nothing reads any
    more are dropped; those that other, still quantized, consumers read stay.
    """
    producers = {output: node for node in quantized.graph.node for output in node.output}
    unknown = set(names) - {node.name for node in quantized.graph.node} - set(producers) \
        - {tensor.name for tensor in quantized.graph.input}
    if unknown:
        raise OptimizeError(f"no layers or activations named {sorted(unknown)} in {model.graph.name or 'the model'}")
    result = onnx.ModelProto()
    result.CopyFrom(quantized)
    if not names:
        return result
    graph = result.graph
    float_nodes = {node.name: node for node in model.graph.node}
    float_inits = {init.name: init for init in model.graph.initializer}
    present = {init.name for init in graph.initializer}
    for node in graph.node:
        for index, name in enumerate(node.input):
            dequantize = producers.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            source = producers.get(dequantize.input[0])
            if source is not None and source.op_type == "QuantizeLinear":
                if node.name in names or source.input[0] in names:
                    node.input[index] = source.input[0]
            elif node.name in names:  # a quantized initializer: the float model's own input, under a name no node makes
                original = float_nodes[node.name].input[index]
                renamed = f"{original}_float" if original in producers else original
                node.input[index] = renamed
                if renamed not in present:
                    graph.initializer.append(float_inits[original])
                    graph.initializer[-1].name = renamed
                    present.add(renamed)
    return without_dead_nodes(result)


def _float_graph_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's outputs straight from the layers that compute them, not through a uint8 round trip; in place.

    Quantizing the logits saves nothing measurable and rounds close scores into
    ties: on EfficientNet-Lite0 it alone turned 0.4% of top-1 answers, and it
    was all of the digits CNN's int8 error.
    """
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    for output in graph.output:
        dequantize = producers.get(output.name)
        quantize = producers.get(dequantize.input[0]) if dequantize is not None else None
        if dequantize is None or dequantize.op_type != "DequantizeLinear" or quantize is None \
                or quantize.op_type != "QuantizeLinear" or quantize.input[0] not in producers:
            continue
        source, rounded = quantize.input[0], f"{output.name}_dequantized"
        dequantize.output[0] = rounded
        for node in graph.node:  # the source tensor takes the output's name; other readers of the old output keep it
            node.input[:] = [rounded if name == output.name else output.name if name == source else name
                             for name in node.input]
            node.output[:] = [output.name if name == source else name for name in node.output]
    return without_dead_nodes(model)
