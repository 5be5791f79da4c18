"""ONNX → PyTorch through onnx2torch, for packages whose source network cannot be rebuilt.

Core ML's converter reads PyTorch, not ONNX (coremltools dropped its ONNX
frontend in 6.0), so an ONNX-only package is first turned back into a torch.fx
module. Three frictions with onnx2torch 1.5 are handled here, each narrowly:

- it imports torchvision at import time, only for NonMaxSuppression and
  RoiAlign; torchvision's PyPI wheels link against CUDA torch and cannot load
  beside a CPU build of torch, so when torchvision does not import, a stand-in
  that fails on use is in `sys.modules` for the duration of that import only;
- it knows ops up to opset 17: newer graphs go through onnx's version converter;
- the dynamo exporter marks every Reshape `allowzero=1`, which onnx2torch
  refuses; with a constant target shape free of zeros the flag changes nothing
  and is dropped.

Ops it lacks or rebuilds in a form Core ML cannot run are added in
`inferd.export.onnx_ops`. Whatever still fails names the ONNX node it failed on.
"""

from __future__ import annotations

import functools
import re
import sys
import traceback
import types
import warnings
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import numpy_helper

from inferd.export import onnx_ops
from inferd.export.errors import ONNX_ADVICE, ExportError, UnsupportedOperation, first_line

MAX_OPSET = 17  # the newest default-domain opset onnx2torch 1.5 converts
_INSTALL = "pip install --no-deps onnx2torch==1.5.15 (its torchvision dependency is optional for inferd)"


def to_torch(model: onnx.ModelProto) -> tuple[Any, dict[str, str]]:
    """A torch.fx module computing the same as `model`, and its submodules' ONNX nodes ("node 'x' (Op)") by name.

    UnsupportedOperation names every node onnx2torch has no converter for;
    ExportError names the node a converter failed on.
    """
    onnx2torch = _onnx2torch()
    model = _normalized(model)
    missing = _unsupported_nodes(model)
    if missing:
        raise UnsupportedOperation(
            f"onnx2torch {_version()} cannot convert {len(missing)} node(s) of this graph to PyTorch, so Core ML "
            f"cannot take it: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; {ONNX_ADVICE}"
        )
    from onnx2torch.onnx_graph import OnnxGraph

    nodes = {name: _label(node.proto) for name, node in OnnxGraph(model.graph).nodes.items()}
    try:
        with warnings.catch_warnings():  # "results might differ": the export measures the difference itself
            warnings.simplefilter("ignore")
            return onnx2torch.convert(model).eval(), nodes
    except Exception as exc:  # a converter's refusal or its own bug, on one node
        where = next((_label(frame.f_locals["onnx_node"].proto) for frame, _ in traceback.walk_tb(exc.__traceback__)
                      if "onnx_node" in frame.f_locals), None)
        error = UnsupportedOperation if isinstance(exc, NotImplementedError) else ExportError
        raise error(f"onnx2torch {_version()} cannot convert {where or 'this graph'} to PyTorch: "
                    f"{first_line(exc) or type(exc).__name__}; {ONNX_ADVICE}") from exc


def first_divergence(module: Any, model: onnx.ModelProto, feeds: dict[str, np.ndarray], tolerance: float) -> str | None:
    """The first node, in graph order, whose output `module` (from `to_torch(model)`) computes unlike ONNX Runtime.

    Every intermediate value with a known type becomes an output of the ONNX
    graph; the module runs node by node, keeping each node's result.
    """
    import torch
    from onnx2torch.onnx_graph import OnnxGraph

    from inferd.convert.fidelity import run_onnx_reference

    graph = OnnxGraph(_normalized(model).graph)
    probe = onnx.shape_inference.infer_shapes(model)
    typed = {value.name: value for value in probe.graph.value_info}
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(typed[v] for node in graph.nodes.values() for v in node.output_values
                              if v in typed and v not in known)
    reference = dict(zip((o.name for o in probe.graph.output), run_onnx_reference(probe, feeds), strict=True))
    results: dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
            results[target] = super().call_module(target, args, kwargs)
            return results[target]

    order = [i.name for i in model.graph.input if i.name in feeds]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Recorder(module).run(*(torch.from_numpy(feeds[name]) for name in order))
    for name, node in graph.nodes.items():
        got = results.get(name)
        for value, tensor in zip(node.output_values, got if isinstance(got, (tuple, list)) else (got,), strict=False):
            if value not in reference or not isinstance(tensor, torch.Tensor):
                continue
            ref, mine = reference[value], tensor.detach().numpy()
            if ref.shape != mine.shape or np.max(np.abs(mine - ref), initial=0.0) > tolerance * max(
                    1.0, float(np.max(np.abs(ref), initial=0.0))):
                return _label(node.proto)
    return None


def _version() -> str:
    from importlib.metadata import version

    return version("onnx2torch")


@functools.cache
def _onnx2torch() -> Any:
    stand_in: dict[str, types.ModuleType] = {}
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or present but built for another torch
        stand_in = _torchvision_stand_in()
    sys.modules.update(stand_in)
    try:
        import onnx2torch
        from onnx2torch.node_converters.registry import add_converter, get_converter
    except ModuleNotFoundError as exc:
        raise ExportError(f"exporting an ONNX-only package needs onnx2torch: {_INSTALL}") from exc
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    onnx_ops.register(add_converter, get_converter)
    return onnx2torch


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def unavailable(*_: object, **__: object) -> NoReturn:
        raise UnsupportedOperation(
            "this graph uses NonMaxSuppression or RoiAlign, which onnx2torch computes with torchvision, and "
            f"torchvision does not load with this torch build; {ONNX_ADVICE}"
        )

    torchvision = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "box_convert", "roi_align"):
        setattr(ops, name, unavailable)
    torchvision.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": torchvision, "torchvision.ops": ops}


def _default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=MAX_OPSET)


def _normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = copy
    onnx_ops.route(model)
    if _default_opset(model) > MAX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MAX_OPSET)
        except Exception as exc:
            op = re.search(r"for (\w+)\s*$", str(exc))
            nodes = [_label(node) for node in model.graph.node if op and node.op_type == op.group(1)]
            raise UnsupportedOperation(
                f"the graph uses opset {_default_opset(model)} and onnx cannot convert "
                f"{', '.join(nodes[:5]) if nodes else 'it'} down to opset {MAX_OPSET}, the newest onnx2torch reads: "
                f"{first_line(exc)}; {ONNX_ADVICE}"
            ) from exc
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        allowzero = [a for a in node.attribute if a.name == "allowzero"]
        if allowzero and not np.any(numpy_helper.to_array(constants[node.input[1]]) == 0):
            node.attribute.remove(allowzero[0])
    return model


def _label(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} ({node.op_type})"


def _unsupported_nodes(model: onnx.ModelProto) -> list[str]:
    from onnx2torch.node_converters import get_converter

    opsets = {o.domain or "": o.version for o in model.opset_import}
    missing = []
    for node in model.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, MAX_OPSET), domain=domain)
        except NotImplementedError:
            missing.append(f"{node.op_type} (node {node.name!r})")
    return missing
