"""Graph plumbing shared by the compressions: finding weights, deriving packages, in-graph weight decoding.

Compressed weights are stored as small integer initializers plus a subgraph of
standard ONNX ops (Cast, Mul, ReduceSum, Div, Mod, GatherElements, ...) that
rebuilds the float tensor. Every backend constant-folds that subgraph when it
compiles, so the package shrinks on disk without any inferd code at load time
and without slowing inference.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from inferd.manifest import CompressionStep
from inferd.optimize.errors import OptimizeError
from inferd.package import ModelPackage

WEIGHT_OPS = frozenset({"Conv", "Gemm", "MatMul", "ConvTranspose"})
_MAX_IR = 10  # onnxruntime here reads IR <= 13; the installed onnx writes 14


@dataclass(frozen=True)
class Weight:
    """A float initializer used as the weight of a Conv/Gemm/MatMul node (a "layer")."""

    name: str
    layer: str
    op_type: str
    array: np.ndarray
    output_axis: int  # the axis that indexes output channels, for per-channel scales


def compatible_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = min(model.ir_version, _MAX_IR)
    return model


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def ensure_not_compressed(package: ModelPackage, kind: str) -> None:
    """Refuse to apply a compression twice: the second pass compounds the error and saves nothing."""
    if any(step.kind == kind for step in package.manifest.compression):
        applied = ", ".join(step.kind for step in package.manifest.compression)
        raise OptimizeError(
            f"{package.manifest.name} is already compressed with {kind!r} (applied: {applied}); "
            "compressing twice compounds the error without saving space: start again from the uncompressed package"
        )


def derive(
    package: ModelPackage,
    model: onnx.ModelProto,
    step: CompressionStep,
    precision: str | None = None,
) -> ModelPackage:
    """A new in-memory package: the parent's manifest plus the step, without the parent's now-stale fidelity."""
    compatible_ir(model)
    steps = [*package.manifest.compression, step]
    update: dict[str, Any] = {"compression": steps, "files": {}, "fidelity": None}
    if precision is not None:
        update["precision"] = precision
    return ModelPackage(package.manifest.model_copy(update=update), model=model, assets=package.asset_files(),
                        samples=package.samples())


def layer_names(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node if node.op_type in WEIGHT_OPS]


def find_weights(model: onnx.ModelProto, *, exclude: Collection[str] = (), min_elements: int = 64) -> list[Weight]:
    """Float32 weight initializers of the layers not excluded, each listed once (the first layer using it)."""
    initializers = {init.name: init for init in model.graph.initializer}
    found: dict[str, Weight] = {}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2 or node.name in exclude:
            continue
        name = node.input[1]
        init = initializers.get(name)
        if init is None or name in found or init.data_type != onnx.TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(init)
        if array.size < min_elements or array.ndim < 2:
            continue
        found[name] = Weight(name, node.name, node.op_type, array, _output_axis(node))
    return list(found.values())


def _output_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "MatMul":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 1 if node.op_type == "ConvTranspose" else 0


def initializer_bytes(model: onnx.ModelProto) -> int:
    return sum(init.ByteSize() for init in model.graph.initializer)


def replace_initializers(
    model: onnx.ModelProto,
    removed: Collection[str],
    added: list[onnx.TensorProto],
    nodes: list[onnx.NodeProto],
) -> onnx.ModelProto:
    """Copy of `model` with weights swapped for encoded ones; decoding nodes go first so the graph stays sorted."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    kept = [init for init in graph.initializer if init.name not in removed]
    del graph.initializer[:]
    graph.initializer.extend([*kept, *added])
    original = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *original])
    return compatible_ir(result)


def densify(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate every constant subgraph (earlier compressions' decoders) into plain initializers.

    Lets one compression run after another (prune then palettize) on the real weight
    values, whatever encoding the earlier step used.
    """
    initializers = {init.name for init in model.graph.initializer}
    constant: list[onnx.NodeProto] = []
    known = set(initializers)
    for node in model.graph.node:
        if all(not name or name in known for name in node.input):
            constant.append(node)
            known.update(node.output)
    if not constant:
        return model
    constant_ids = {id(node) for node in constant}
    rest = [node for node in model.graph.node if id(node) not in constant_ids]
    produced = {out for node in constant for out in node.output}
    needed = [name for name in _consumed(rest, model.graph.output) if name in produced]
    used = {name for node in constant for name in node.input}
    folder = helper.make_model(
        helper.make_graph(
            constant, "fold", [],
            [helper.make_empty_tensor_value_info(name) for name in needed],
            [init for init in model.graph.initializer if init.name in used],
        ),
        opset_imports=list(model.opset_import),
    )
    values = _run(compatible_ir(folder), {})
    result = onnx.ModelProto()
    result.CopyFrom(model)
    still_used = {name for node in rest for name in node.input}
    inits = [init for init in model.graph.initializer if init.name in still_used]
    inits += [numpy_helper.from_array(np.asarray(value), name) for name, value in zip(needed, values, strict=True)]
    del result.graph.initializer[:]
    result.graph.initializer.extend(inits)
    del result.graph.node[:]
    result.graph.node.extend(rest)
    return compatible_ir(result)


def without_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes whose outputs nobody reads, repeatedly, then the initializers nobody reads; in place."""
    graph = model.graph
    while True:
        read = set(_consumed(list(graph.node), graph.output))
        live = [node for node in graph.node if any(output in read for output in node.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    read = set(_consumed(list(graph.node), ()))
    kept = [init for init in graph.initializer if init.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _consumed(nodes: list[onnx.NodeProto], outputs: Any) -> list[str]:
    names = [name for node in nodes for name in node.input] + [o.name for o in outputs]
    return list(dict.fromkeys(names))


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, dict(feeds))]


def replace_weights(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """Copy of `model` with some initializers given new dense values (the guard's per-layer trials)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for init in result.graph.initializer:
        if init.name in arrays:
            init.CopyFrom(numpy_helper.from_array(arrays[init.name].astype(np.float32), init.name))
    return result


# -- bit packing --------------------------------------------------------------------------------


def _chunk(bits: int) -> tuple[int, int]:
    """(bytes, values) per chunk: the smallest whole number of bytes holding whole values."""
    span = math.lcm(bits, 8)
    return span // 8, span // bits


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Little-endian bit packing of unsigned `values` < 2**bits into a (chunks, bytes) uint8 array."""
    n_bytes, per_chunk = _chunk(bits)
    flat = values.astype(np.uint32).reshape(-1)
    grid = np.pad(flat, (0, -flat.size % per_chunk)).reshape(-1, per_chunk)
    words = (grid << (bits * np.arange(per_chunk, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    return ((words[:, None] >> (8 * np.arange(n_bytes, dtype=np.uint32))) & 0xFF).astype(np.uint8)


class Decoder:
    """Builds the decoding subgraphs and their shared constants for one encoded model."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[str, str] = {}

    def constant(self, key: str, array: np.ndarray) -> str:
        if key not in self._constants:
            name = f"{self.prefix}/{key}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def tensor(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def unpack(self, base: str, packed: np.ndarray, bits: int, count: int) -> str:
        """Nodes turning `packed` (from pack_bits) back into `count` int32 values; returns the output name."""
        n_bytes, per_chunk = _chunk(bits)
        source = self.node("Cast", [self.tensor(f"{base}/packed", packed)], f"{base}/bytes", to=onnx.TensorProto.INT32)
        if n_bytes > 1:
            weights = self.constant(f"byte_weights{n_bytes}", (256 ** np.arange(n_bytes)).astype(np.int32))
            source = self.node("Mul", [source, weights], f"{base}/weighted")
            axes = self.constant("axis1", np.array([1], dtype=np.int64))
            source = self.node("ReduceSum", [source, axes], f"{base}/words", keepdims=1)
        if per_chunk > 1 or bits < 8:
            divisors = self.constant(f"shifts{bits}", (2 ** (bits * np.arange(per_chunk))).astype(np.int32))
            source = self.node("Div", [source, divisors], f"{base}/shifted")
            modulus = self.constant(f"modulus{bits}", np.array(2**bits, dtype=np.int32))
            source = self.node("Mod", [source, modulus], f"{base}/fields")
        flat = self.node("Reshape", [source, self.constant("flat", np.array([-1], dtype=np.int64))], f"{base}/flat")
        return self.slice(flat, count, f"{base}/unpacked")

    def slice(self, source: str, count: int, output: str) -> str:
        """The first `count` values of a 1-D tensor: drops the padding of the last chunk or group."""
        starts = self.constant("zero", np.array([0], dtype=np.int64))
        ends = self.constant(f"end{count}", np.array([count], dtype=np.int64))
        return self.node("Slice", [source, starts, ends], output)

    def reshape(self, source: str, shape: tuple[int, ...], output: str) -> str:
        target = self.constant(f"shape{'x'.join(map(str, shape))}", np.array(shape, dtype=np.int64))
        return self.node("Reshape", [source, target], output)


def require_opset(model: onnx.ModelProto, minimum: int, what: str) -> None:
    if default_opset(model) < minimum:
        raise OptimizeError(
            f"{what} needs an ONNX opset >= {minimum}, the model has {default_opset(model)}; "
            "re-convert the model with a newer opset"
        )
