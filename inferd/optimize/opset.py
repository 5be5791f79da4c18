"""Bring a package's graph up to the ONNX opset a compression writes, before the compression runs.

A package keeps its source's opset (anything in 7..21), but the compressions
emit op forms that need a newer one: a per-channel `DequantizeLinear` (its
`axis`) and `ReduceSum` with its axes as an input exist from opset 13. Written
into an opset-11 graph they make a package no backend opens (ONNX Runtime:
INVALID_GRAPH; OpenVINO cannot convert it), so the graph is moved to that opset
first with ONNX's own version converter. The converter's adapters rewrite ops
(Squeeze's axes become an input, say), so the upgraded graph must pass the full
ONNX checker and compute what the original computed, in ONNX Runtime fp32 on
the package's sample inputs (synthetic ones for a package without), before any
compression builds on it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np
import onnx

from inferd.convert.fidelity import compare_outputs
from inferd.convert.reference import run_onnx
from inferd.convert.samples import sample_feeds
from inferd.optimize._graph import compatible_ir, default_opset
from inferd.optimize.errors import OptimizeError
from inferd.package import ModelPackage

# The lowest opset each compression's output is valid in. fp16 only retypes tensors and inserts Casts,
# which every opset the packages use has; the others write per-channel DequantizeLinear or decode their
# weights with ReduceSum(axes as input), both opset 13.
REQUIRED_OPSET: dict[str, int] = {"fp16": 7, "int8": 13, "int8-weights": 13, "palettize": 13, "prune": 13}
# How far the upgraded graph may drift from the original, relative to the largest output value: the
# adapters only restate ops, so anything beyond float rounding is a conversion bug.
RELATIVE_TOLERANCE = 1e-5


def upgrade_for(package: ModelPackage, kinds: Collection[str]) -> tuple[ModelPackage, dict[str, Any] | None]:
    """`package` with a graph at the opset every compression in `kinds` needs, and what the upgrade did (None: not
    needed). The pipeline upgrades before its first step: a compressed graph is no input for the converter (fp16's
    Casts are not in topological order)."""
    model = package.onnx_model
    current = default_opset(model)
    needed = max(REQUIRED_OPSET[kind] for kind in kinds)
    if current >= needed:
        return package, None
    kind = ", ".join(k for k in kinds if REQUIRED_OPSET[k] > current)
    upgraded = _converted(model, current, needed, kind)
    feeds = package.samples() or sample_feeds(package.manifest.graph_inputs)
    try:
        reference, result = run_onnx(model, feeds), run_onnx(upgraded, feeds)
    except Exception as exc:  # ONNX Runtime raises its own exception types
        raise OptimizeError(
            f"compressing with {kind} needs ONNX opset {needed}; the graph converted from opset {current} does not "
            f"run in ONNX Runtime ({_first_line(exc)}); re-export the model from its source at opset {needed} or newer"
        ) from None
    scale = max(1.0, *(float(np.abs(np.asarray(out, dtype=np.float64)).max(initial=0.0)) for out in reference))
    fidelity = compare_outputs(reference, result, reference_name=f"the opset-{current} graph",
                               runtime_name="onnxruntime cpu fp32", tolerance=RELATIVE_TOLERANCE * scale)
    if not fidelity.passed:
        raise OptimizeError(
            f"compressing with {kind} needs ONNX opset {needed}; converted from opset {current}, the graph's outputs moved by "
            f"{fidelity.max_abs_diff:.3g} (at most {fidelity.tolerance:.3g} allowed) on {fidelity.samples} sample "
            f"inputs; re-export the model from its source at opset {needed} or newer"
        )
    details = {"from": current, "to": needed, "checked_samples": fidelity.samples,
               "max_abs_diff": fidelity.max_abs_diff}
    manifest = package.manifest.model_copy(update={"files": {}})
    return ModelPackage(manifest, model=upgraded, assets=package.asset_files(), samples=package.samples()), details


def record_upgrade(package: ModelPackage, details: dict[str, Any] | None) -> ModelPackage:
    """`package` with the upgrade noted in its last compression step: the one that compressed the upgraded graph."""
    if details is None:
        return package
    *earlier, last = package.manifest.compression
    step = last.model_copy(update={"details": {**last.details, "opset_upgrade": details}})
    manifest = package.manifest.model_copy(update={"compression": [*earlier, step]})
    return ModelPackage(manifest, model=package.onnx_model, assets=package.asset_files(), samples=package.samples())


def _converted(model: onnx.ModelProto, current: int, needed: int, kind: str) -> onnx.ModelProto:
    try:
        # the adapters for old broadcasting rules need every tensor's shape
        converted = onnx.version_converter.convert_version(onnx.shape_inference.infer_shapes(model), needed)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # the converter and checker raise onnx's C++ errors as well as Python ones
        raise OptimizeError(
            f"compressing with {kind} needs ONNX opset {needed} and this graph is at opset {current}; converting it failed "
            f"({_first_line(exc)}); re-export the model from its source at opset {needed} or newer"
        ) from None
    return compatible_ir(converted)


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
