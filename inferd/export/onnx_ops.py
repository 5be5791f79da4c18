"""PyTorch forms of ONNX ops that onnx2torch 1.5 lacks, or rebuilds in a form Core ML cannot run.

- GlobalMaxPool has no onnx2torch converter at all; it is a max over the
  spatial axes.
- Pad: onnx2torch hands reflect and edge modes to torch's reflect/replicate
  pad, which takes only the last one to three axes (how many depends on the
  rank) and fails at run time on the others; where torch takes it, coremltools
  writes a Core ML pad that the device's runtime refuses to load once anything
  outside the last two axes is padded. And opset 18's Pad (its `axes` input)
  has no down-conversion in onnx, so a graph with one, as inferd's PyTorch
  converter writes, fails the conversion to the opset onnx2torch reads. Here
  reflect and edge are rebuilt one axis at a time from slices, flips, tiles
  and a concatenation (the same values on any axis of any rank, and Core ML
  runs each of them on any axis), constant mode is torch's constant pad.

Both register through onnx2torch's own `add_converter`. onnx2torch has a Pad
converter of its own, so Pad nodes are moved into inferd's domain before
conversion (`route`), before the opset conversion too, which leaves them be.
"""

from __future__ import annotations

from typing import Any

import onnx
import torch

DOMAIN = "inferd"  # no dots: onnx2torch names a module after its node's domain and name
MODES = ("constant", "reflect", "edge")  # not opset 19's wrap


class GlobalMaxPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


class Pad(torch.nn.Module):
    """ONNX Pad, opsets 2 to 18: constant, reflect and edge modes, any axes of any rank; negative amounts crop.

    `static` holds the inputs known when converting ("pads", "value", "axes"),
    `dynamic` names the ones computed in the graph, which forward receives in
    that order after the data (a trace keeps the values it saw).
    """

    def __init__(self, mode: str, static: dict[str, Any], dynamic: list[str]) -> None:
        super().__init__()
        self.mode, self.static, self.dynamic = mode, static, dynamic

    def forward(self, x: torch.Tensor, *computed: torch.Tensor) -> torch.Tensor:
        given = self.static | {name: value.tolist() for name, value in zip(self.dynamic, computed, strict=True)}
        rank = x.dim()
        before, after = _per_axis(given["pads"], given.get("axes"), rank)
        if min(before + after) < 0:  # negative amounts crop
            x = x[tuple(slice(max(-b, 0), a if a < 0 else None) for b, a in zip(before, after, strict=True))]
            before, after = [max(b, 0) for b in before], [max(a, 0) for a in after]
        if self.mode == "constant":
            torch_order = [amount for axis in reversed(range(rank)) for amount in (before[axis], after[axis])]
            return torch.nn.functional.pad(x, torch_order, value=float(given.get("value") or 0.0))
        for axis in range(rank):
            x = self._pad_axis(x, axis, before[axis], after[axis])
        return x

    def _pad_axis(self, x: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
        """Reflect or edge: slices, flips and tiles, which Core ML runs on any axis (its pad op does not)."""
        def part(start: int | None, stop: int | None) -> torch.Tensor:
            return x[(slice(None),) * axis + (slice(start, stop),)]

        pieces = [x]
        if before > 0:
            pieces.insert(0, part(1, before + 1).flip(axis) if self.mode == "reflect" else _tile(part(0, 1), axis, before))
        if after > 0:
            pieces.append(part(-after - 1, -1).flip(axis) if self.mode == "reflect" else _tile(part(-1, None), axis, after))
        return torch.cat(pieces, axis) if len(pieces) > 1 else x


def _per_axis(pads: list[int], axes: list[int] | None, rank: int) -> tuple[list[int], list[int]]:
    """ONNX's [begins..., ends...] over `axes` (all axes when None) as begin and end amounts for every axis."""
    axes = [axis % rank for axis in axes] if axes is not None else list(range(rank))
    before, after = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        before[axis], after[axis] = int(pads[i]), int(pads[i + len(axes)])
    return before, after


def _tile(edge: torch.Tensor, axis: int, times: int) -> torch.Tensor:
    return edge.repeat([times if i == axis else 1 for i in range(edge.dim())])


def _global_max_pool(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    return OperationConverterResult(torch_module=GlobalMaxPool(), onnx_mapping=onnx_mapping_from_node(node))


def _pad(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    mode = node.attributes.get("mode", "constant")
    if mode not in MODES:
        raise NotImplementedError(f"Pad's {mode} mode is not implemented (only {', '.join(MODES)})")
    static: dict[str, Any] = {}
    dynamic: list[str] = []
    if "pads" in node.attributes:  # Pad before opset 11: amounts and value are attributes
        static = {"pads": list(node.attributes["pads"]), "value": node.attributes.get("value", 0.0)}
    for name, value in zip(("pads", "value", "axes"), node.input_values[1:], strict=False):
        if value in graph.initializers:
            static[name] = graph.initializers[value].to_torch().tolist()
        elif value:
            dynamic.append(name)
    inputs = (node.input_values[0], *(v for v in node.input_values[1:] if v and v not in graph.initializers))
    return OperationConverterResult(torch_module=Pad(mode, static, dynamic),
                                    onnx_mapping=OnnxMapping(inputs=inputs, outputs=node.output_values))


def register(add_converter: Any, get_converter: Any) -> None:
    """Add the converters to onnx2torch's registry; one that onnx2torch has by now is left to it."""
    for op_type, domain, converter in (("GlobalMaxPool", "", _global_max_pool), ("Pad", DOMAIN, _pad)):
        try:
            get_converter(operation_type=op_type, version=1, domain=domain)
        except NotImplementedError:
            add_converter(operation_type=op_type, version=1, domain=domain)(converter)


def route(model: onnx.ModelProto) -> None:
    """Move the Pad nodes of `model` (changed in place) into inferd's domain, to its converter.

    Shapes are inferred first and kept in the graph: onnx cannot infer through
    an op of an unknown domain, and onnx2torch needs the shapes of what
    follows (a MaxPool after the pad, say).
    """
    pads = [node for node in model.graph.node if node.op_type == "Pad" and node.domain in ("", "ai.onnx")]
    if not pads:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    for node in pads:
        node.domain = DOMAIN
    model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, 1))
