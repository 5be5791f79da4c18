"""How much arithmetic one inference of an ONNX graph does: the numerator of the roofline.

Multiply-accumulates (MACs) are counted only for the operators that dominate a
network's compute and that a CPU's vector units run as dot products: Conv
(grouped and depthwise included), ConvTranspose, Gemm and MatMul (batched,
broadcast), and their quantized forms. Elementwise operators, activations,
normalizations and pooling are counted apart, one operation per output element
(a pooling window's elements for pooling, an input element for a reduction),
because they are bound by memory rather than by the FMA units and would make a
GOP/s figure incomparable with a GEMM peak. Data movement (Reshape, Transpose,
Concat, Gather, Cast...) counts nothing.

Shapes come from `onnx.shape_inference` with every input's dimensions bound to
the shapes actually fed (the bench batch and sequence length), so a dynamic
graph is counted at the size it is timed at. A node whose shapes stay unknown
is named in `OpCount.unknown`: the count is then a lower bound, and says so.

MACs whose two operands are both int8 (a QDQ pair on the data and on the
weights, QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) are also
counted apart, since the CPU runs them on its int8 dot-product units.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

# operator → (data input index, weight input index) for the operators counted as MACs
_CONV = {"Conv": (0, 1), "QLinearConv": (0, 3), "ConvInteger": (0, 1)}
_MATMUL = {"MatMul": (0, 1), "QLinearMatMul": (0, 3), "MatMulInteger": (0, 1)}
_INTEGER = {"QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger"}

_ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Max", "Min", "Sum", "Mean",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Erf", "Gelu", "Softplus", "Softsign", "Mish", "Softmax", "LogSoftmax", "BatchNormalization",
    "InstanceNormalization", "LayerNormalization", "GroupNormalization", "Where", "Equal", "Less", "Greater",
    "QuantizeLinear", "DequantizeLinear",
})
_WINDOWED = frozenset({"MaxPool", "AveragePool", "LpPool"})
_REDUCTIONS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                         "ReduceL2", "ReduceSumSquare"})
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


@dataclass(frozen=True)
class OpCount:
    """The arithmetic of one run of a graph at the shapes it was counted with (the whole batch)."""

    macs: int
    int8_macs: int
    other_ops: int
    by_op: dict[str, int] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"macs": self.macs, "int8_macs": self.int8_macs, "other_ops": self.other_ops,
                "by_op": dict(self.by_op), "unknown": list(self.unknown)}


def bind_inputs(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    """A copy of `model` whose inputs have the given fixed shapes, with every tensor's shape inferred from them."""
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for value in bound.graph.input:
        if value.name not in input_shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = list(input_shapes[value.name])
        if len(dims) != len(shape):
            raise ValueError(f"input {value.name} has {len(dims)} dimensions, {len(shape)} were given: {shape}")
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    del bound.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(bound, strict_mode=False, data_prop=True)


def _shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Every tensor's shape, None where some dimension is still unknown."""
    shapes: dict[str, tuple[int, ...] | None] = {init.name: tuple(init.dims) for init in model.graph.initializer}
    for value in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        shapes.setdefault(value.name, None if -1 in dims else dims)
    return shapes


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    found = next((a for a in node.attribute if a.name == name), None)
    return int(onnx.helper.get_attribute_value(found)) if found is not None else default


def _conv(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    w, y = shapes.get(node.input[_CONV[node.op_type][1]]), shapes.get(node.output[0])
    if w is None or y is None:
        return None
    # weights (C_out, C_in / group, k...): every output element is a dot product over one group's inputs × kernel
    return math.prod(y) * math.prod(w[1:])


def _conv_transpose(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    x, w = shapes.get(node.input[0]), shapes.get(node.input[1])
    if x is None or w is None:
        return None
    # weights (C_in, C_out / group, k...): every input element is scattered into C_out / group × kernel outputs
    return math.prod(x) * math.prod(w[1:])


def _matmul(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    first, second = _MATMUL[node.op_type]
    a, b, y = shapes.get(node.input[first]), shapes.get(node.input[second]), shapes.get(node.output[0])
    if a is None or b is None or y is None:
        return None
    # y holds the broadcast batch and M × N (a 1-D operand drops its dimension); each element sums over K
    return math.prod(y) * a[-1]


def _gemm(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    a, y = shapes.get(node.input[0]), shapes.get(node.output[0])
    if a is None or y is None:
        return None
    inner = a[0] if _attribute(node, "transA", 0) else a[-1]
    return math.prod(y) * inner


def _other(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...] | None]) -> int | None:
    if node.op_type in _ELEMENTWISE:
        y = shapes.get(node.output[0])
        return None if y is None else math.prod(y)
    if node.op_type in _WINDOWED:
        y = shapes.get(node.output[0])
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
        return None if y is None or kernel is None else math.prod(y) * math.prod(kernel)
    if node.op_type in _REDUCTIONS:
        x = shapes.get(node.input[0])
        return None if x is None else math.prod(x)
    return 0


def _int8_operands(node: onnx.NodeProto, producers: Mapping[str, str], pair: tuple[int, int]) -> bool:
    """Whether both of a float operator's operands come straight from DequantizeLinear (a QDQ-quantized op)."""
    return all(producers.get(node.input[index]) == "DequantizeLinear" for index in pair)


def _observed_shapes(model: onnx.ModelProto, names: Sequence[str], feeds: Mapping[str, np.ndarray],
                     ) -> dict[str, tuple[int, ...] | None]:
    """The shapes of `names` seen in one real run, for graphs whose shapes depend on computed values that
    `onnx.shape_inference` does not follow (a Slice up to a Shape's output, as exported transformers have)."""
    import onnxruntime as ort

    types = {value.name: value.type for value in (*model.graph.value_info, *model.graph.output)}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    wanted = [name for name in names if name in types and types[name].tensor_type.elem_type]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, types[name].tensor_type.elem_type, None)
                              for name in wanted)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(wanted, dict(feeds))
    return {name: tuple(int(d) for d in np.shape(value)) for name, value in zip(wanted, values, strict=True)}


def count(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> OpCount:
    """The MACs and other operations of one run of `model` on `feeds` (input name → array; only their shapes
    matter unless some shape depends on computed values, when the graph is run once on them to see it)."""
    inferred = bind_inputs(model, {name: np.shape(value) for name, value in feeds.items()})
    shapes = _shapes(inferred)
    nodes = [node for node in inferred.graph.node if node.op_type not in _CONTROL_FLOW]
    missing = sorted({name for node in nodes for name in (*node.input, *node.output)
                      if name and name in shapes and shapes[name] is None}
                     | {name for node in nodes for name in node.output if name and name not in shapes})
    # a graph ONNX Runtime cannot run (a custom operator) is counted where it can be: the nodes left unsized are
    # named in `unknown`, so the count says it is a lower bound
    with contextlib.suppress(Exception):
        if missing:
            shapes.update(_observed_shapes(inferred, missing, feeds))
    producers = {output: node.op_type for node in inferred.graph.node for output in node.output}
    macs = int8_macs = other = 0
    by_op: dict[str, int] = {}
    unknown = [f"{node.op_type} {node.name}" for node in inferred.graph.node if node.op_type in _CONTROL_FLOW]
    for node in nodes:
        op = node.op_type
        if op in _CONV or op in _MATMUL or op in ("ConvTranspose", "Gemm"):
            counter = (_conv if op in _CONV else _matmul if op in _MATMUL
                       else _conv_transpose if op == "ConvTranspose" else _gemm)
            found = counter(node, shapes)
            if found is None:
                unknown.append(f"{op} {node.name}")
                continue
            macs += found
            by_op[op] = by_op.get(op, 0) + found
            pair = _CONV.get(op) or _MATMUL.get(op) or (0, 1)
            if op in _INTEGER or _int8_operands(node, producers, pair):
                int8_macs += found
            continue
        found = _other(node, shapes)
        if found is None:
            unknown.append(f"{op} {node.name}")
        else:
            other += found
    return OpCount(macs=macs, int8_macs=int8_macs, other_ops=other, by_op=by_op, unknown=tuple(unknown))
