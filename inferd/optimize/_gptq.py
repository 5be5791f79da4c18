"""GPTQ (Frantar et al. 2022): round a layer's weights one input at a time, moving each error onto the rest.

Rounding every weight to its nearest level leaves errors that add up in layers
whose batch-norm-folded weights are large and cancel (an edge detector on
saturated ReLU6 inputs). GPTQ rounds one input column at a time and moves the
error onto the columns not yet rounded and onto the bias, weighted by the
layer's input second moments on calibration data, which also corrects the bias
for what rounding shifted. The rounding grid is the caller's: int8 levels for
static int8, a lookup table for palettization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper

from inferd.optimize.calibration import Feeds
from inferd.optimize.progress import task

_ROWS_PER_SAMPLE = 1024  # input rows per calibration sample and layer that enter the second moments
_DAMP = 0.01  # GPTQ's dampening of the second moments, as a fraction of their mean diagonal

# (column index, that column of every output channel as [groups, outputs per group]) -> the rounded values
RoundColumn = Callable[[int, np.ndarray], np.ndarray]


def gptq(weight: np.ndarray, bias: np.ndarray, moments: np.ndarray, round_column: RoundColumn) -> tuple[np.ndarray, np.ndarray]:
    """The rounded `weight` (output channels first, 2-D) and the float bias that absorbs what rounding left.

    `moments` holds E[x x^T] of the layer's input rows extended by a constant 1,
    one matrix per group, so the bias is the last column and is never rounded.
    """
    groups, size = moments.shape[0], moments.shape[1] - 1
    outputs = weight.shape[0]
    per_group = outputs // groups
    work = np.concatenate(
        [weight.reshape(groups, per_group, size), bias.reshape(groups, per_group, 1)], axis=2
    ).astype(np.float64)
    hessian = moments.copy()
    diagonal = np.einsum("gii->gi", hessian)  # a writable view: dampening edits `hessian`
    diagonal += _DAMP * diagonal.mean(axis=1, keepdims=True) + 1e-12
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).transpose(0, 2, 1)
    rounded = np.zeros((groups, per_group, size))
    for j in range(size):
        rounded[:, :, j] = round_column(j, work[:, :, j])
        error = (work[:, :, j] - rounded[:, :, j]) / upper[:, None, j, j]
        work[:, :, j + 1 :] -= error[:, :, None] * upper[:, None, j, j + 1 :]
    return rounded.reshape(weight.shape), work[:, :, size].reshape(outputs)


def attribute(node: onnx.NodeProto, name: str, default: object) -> Any:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def supports(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    """Whether `input_moments` knows the layer's input rows: Gemm, and undilated dense or depthwise Conv."""
    if node.op_type == "Gemm":
        return weight.ndim == 2 and not attribute(node, "transA", 0)
    group = attribute(node, "group", 1)
    if node.op_type != "Conv" or weight.ndim != 4 or any(d != 1 for d in attribute(node, "dilations", [1, 1])):
        return False
    return group == 1 or weight.shape[:2] == (group, 1)


def output_first(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    """The weight as [output channels, inputs in `input_moments`' order]."""
    if node.op_type == "Gemm" and not attribute(node, "transB", 0):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


def _rows(x: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    """A layer's input as [groups, rows, inputs per output channel], in the weight's flattening order."""
    if node.op_type == "Gemm":
        return x.reshape(1, x.shape[0], -1)
    kh, kw = attribute(node, "kernel_shape", None)
    top, left, bottom, right = attribute(node, "pads", [0, 0, 0, 0])
    sh, sw = attribute(node, "strides", [1, 1])
    channels = x.shape[1]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw].transpose(0, 2, 3, 1, 4, 5)
    if attribute(node, "group", 1) == 1:
        return windows.reshape(1, -1, channels * kh * kw)
    return windows.reshape(-1, channels, kh * kw).transpose(1, 0, 2)


def input_moments(model: onnx.ModelProto, layers: list[onnx.NodeProto], feeds: Sequence[Feeds]) -> dict[str, np.ndarray]:
    """E[x x^T] per layer and group over the calibration feeds; rows are subsampled to bound the cost."""
    if not layers:  # onnxruntime reads an empty list of output names as "all outputs"
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(dict.fromkeys(node.input[0] for node in layers))
    present = {output.name for output in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    advance = task("measuring layer inputs", len(feeds))
    for feed in feeds:
        values = dict(zip(names, session.run(names, feed), strict=True))
        for node in layers:
            rows = _rows(np.asarray(values[node.input[0]], dtype=np.float32), node)
            if rows.shape[1] > _ROWS_PER_SAMPLE:
                rows = rows[:, rng.choice(rows.shape[1], _ROWS_PER_SAMPLE, replace=False)]
            rows = np.concatenate([rows, np.ones((*rows.shape[:2], 1), np.float32)], axis=2)
            sums[node.name] = sums.get(node.name, 0) + np.matmul(rows.transpose(0, 2, 1), rows).astype(np.float64)
            counts[node.name] = counts.get(node.name, 0) + rows.shape[1]
        advance(1)
    return {name: total / counts[name] for name, total in sums.items()}
