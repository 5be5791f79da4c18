"""Static int8's weights re-rounded after onnxruntime's quantizer, for two measured reasons (EfficientNet-Lite0,
200 augmented photos, top-1 agreement with fp32: 62% as onnxruntime writes it):

- CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply uint8 activations by
  int8 weights with `vpmaddubsw`, which adds two neighbouring products into a
  saturating int16: 255 * (127 + 127) overflows. onnxruntime and OpenVINO both
  run QDQ models that way (their outputs agreed with each other, not with the
  QDQ arithmetic). Scales are therefore chosen so every pair of neighbouring
  input channels of a 1x1 convolution or Gemm has |q1| + |q2| <= 128; larger
  dense kernels, whose pairing is the backend's business, keep |q| <= 64;
  depthwise kernels widen to int32 and keep the full range.
- Rounding each weight to its nearest level leaves errors that add up; GPTQ
  (`inferd.optimize._gptq`) rounds with error feedback and corrects the bias.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from inferd.optimize._gptq import attribute, gptq, input_moments, output_first, supports
from inferd.optimize.calibration import Feeds

_PAIR_LIMIT = 128  # 255 * 128 = 32640 <= 32767: a pair of uint8 x int8 products never saturates int16
_SAFE_LIMIT = 64  # |q| <= 64 keeps every pairing safe


def refine_weights(quantized: onnx.ModelProto, model: onnx.ModelProto, feeds: Sequence[Feeds]) -> list[str]:
    """Rewrite, in place, the int8 weights and int32 biases of `quantized` (onnxruntime's QDQ form of `model`).

    Covers Conv (dense and depthwise) and Gemm, which is what image models are
    made of; returns the layers it rewrote.
    """
    inits = {init.name: init for init in quantized.graph.initializer}
    floats = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    layers = [
        node for node in model.graph.node
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[1] in floats
        and node.input[2] in floats and f"{node.input[1]}_quantized" in inits
        and f"{node.input[2]}_quantized" in inits and supports(node, floats[node.input[1]])
    ]
    moments = input_moments(model, layers, feeds)
    for node in layers:
        weight_name, bias_name = node.input[1], node.input[2]
        transposed = node.op_type == "Gemm" and not attribute(node, "transB", 0)
        weight = output_first(node, floats[weight_name])
        pairs, limit = _pair_rule(node, floats[weight_name])
        scale = _safe_scale(weight, pairs, limit)
        levels, bias = _int8_gptq(weight, floats[bias_name], moments[node.name], scale, pairs=pairs, limit=limit)
        # onnxruntime's bias scale is input scale x weight scale; keep the input scale, take the new weight scale.
        old_scale = numpy_helper.to_array(inits[f"{weight_name}_scale"]).astype(np.float64)
        old_bias_scale = numpy_helper.to_array(inits[f"{bias_name}_quantized_scale"]).astype(np.float64)
        used = old_scale > 0
        input_scale = float(np.median(old_bias_scale[used] / old_scale[used])) if used.any() else 1.0
        bias_scale = (input_scale * scale).astype(np.float32)
        bias_levels = np.clip(np.round(bias / bias_scale), -(2**31), 2**31 - 1).astype(np.int32)
        levels = levels.reshape(floats[weight_name].T.shape if transposed else floats[weight_name].shape)
        _put(inits, f"{weight_name}_quantized", (levels.T if transposed else levels).astype(np.int8))
        _put(inits, f"{weight_name}_scale", scale)
        _put(inits, f"{bias_name}_quantized", bias_levels)
        _put(inits, f"{bias_name}_quantized_scale", bias_scale)
    return [node.name for node in layers]


def _int8_gptq(
    weight: np.ndarray, bias: np.ndarray, moments: np.ndarray, scale: np.ndarray, *, pairs: bool, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer levels of `weight` ([outputs, inputs]) within `limit` and the pair rule, and the corrected bias."""
    groups = moments.shape[0]
    steps = scale.astype(np.float64).reshape(groups, -1)
    levels = np.zeros((groups, steps.shape[1], weight.shape[1]))

    def round_column(j: int, column: np.ndarray) -> np.ndarray:
        level = np.clip(np.round(column / steps), -limit, limit)
        if pairs and j % 2:
            room = _PAIR_LIMIT - np.abs(levels[:, :, j - 1])
            level = np.clip(level, -room, room)
        levels[:, :, j] = level
        return level * steps

    _, corrected = gptq(weight, bias, moments, round_column)
    return levels.reshape(weight.shape), corrected


def _pair_rule(node: onnx.NodeProto, weight: np.ndarray) -> tuple[bool, int]:
    """(neighbouring input pairs must fit int16, level limit): see the note on `vpmaddubsw` above."""
    if node.op_type == "Gemm":
        return True, 127
    if attribute(node, "group", 1) > 1:
        return False, 127  # depthwise kernels widen to int32
    return (True, 127) if weight.shape[2:] == (1, 1) else (False, _SAFE_LIMIT)


def _safe_scale(weight: np.ndarray, pairs: bool, limit: int) -> np.ndarray:
    """Per-output-channel steps: the largest weight fits `limit` and, with `pairs`, every neighbouring pair 128."""
    flat = np.abs(weight.reshape(weight.shape[0], -1)).astype(np.float64)
    scale = flat.max(axis=1) / limit
    if pairs:
        even = np.pad(flat, ((0, 0), (0, flat.shape[1] % 2)))
        scale = np.maximum(scale, (even[:, 0::2] + even[:, 1::2]).max(axis=1) / _PAIR_LIMIT)
    return np.where(scale > 0, scale, 1.0).astype(np.float32)


def _put(inits: dict[str, onnx.TensorProto], name: str, array: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(array, name))
