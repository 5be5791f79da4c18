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
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import numpy_helper

from inferd.export.errors import ExportError, UnsupportedOperation

MAX_OPSET = 17  # the newest default-domain opset onnx2torch 1.5 converts
_INSTALL = "pip install --no-deps onnx2torch==1.5.15 (its torchvision dependency is optional for inferd)"
_WHAT_TO_TRY = (
    "export from the PyTorch source instead (a package whose manifest names an inferd factory is rebuilt in PyTorch), "
    "or re-export the ONNX model without the op"
)


def to_torch(model: onnx.ModelProto) -> Any:
    """A torch.fx module computing the same as `model`; UnsupportedOperation names every node onnx2torch cannot take."""
    onnx2torch = _onnx2torch()
    model = _normalized(model)
    missing = _unsupported_nodes(model)
    if missing:
        raise UnsupportedOperation(
            f"onnx2torch {_version()} cannot convert {len(missing)} node(s) of this graph to PyTorch, so Core ML "
            f"cannot take it: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}; {_WHAT_TO_TRY}"
        )
    try:
        return onnx2torch.convert(model).eval()
    except NotImplementedError as exc:
        raise UnsupportedOperation(f"onnx2torch {_version()} cannot convert this graph: {exc}; {_WHAT_TO_TRY}") from exc


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
    except ModuleNotFoundError as exc:
        raise ExportError(f"exporting an ONNX-only package needs onnx2torch: {_INSTALL}") from exc
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    return onnx2torch


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def unavailable(*_: object, **__: object) -> NoReturn:
        raise UnsupportedOperation(
            "this graph uses NonMaxSuppression or RoiAlign, which onnx2torch computes with torchvision, and "
            f"torchvision does not load with this torch build; {_WHAT_TO_TRY}"
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
    if _default_opset(model) > MAX_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MAX_OPSET)
        except Exception as exc:
            raise UnsupportedOperation(
                f"the graph uses opset {_default_opset(model)} and onnx cannot convert it down to opset {MAX_OPSET}, "
                f"the newest onnx2torch reads: {exc}; {_WHAT_TO_TRY}"
            ) from exc
    else:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    constants = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        allowzero = [a for a in node.attribute if a.name == "allowzero"]
        if allowzero and not np.any(numpy_helper.to_array(constants[node.input[1]]) == 0):
            node.attribute.remove(allowzero[0])
    return model


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
