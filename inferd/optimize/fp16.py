"""float16 weights and compute, with float32 inputs and outputs so callers feed the same tensors."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from inferd.manifest import CompressionStep
from inferd.optimize._graph import derive, ensure_not_compressed, initializer_bytes
from inferd.optimize.errors import OptimizeError
from inferd.package import ModelPackage

KIND = "fp16"
# Ops whose float16 range or accumulation commonly overflows; the user can widen or narrow the list.
DEFAULT_BLOCK_LIST: tuple[str, ...] = ("Softmax", "LayerNormalization", "ReduceMean", "Exp", "Pow")


def to_fp16(
    package: ModelPackage,
    *,
    op_block_list: Sequence[str] = DEFAULT_BLOCK_LIST,
    exclude: Collection[str] = (),
) -> ModelPackage:
    """New package computing in float16 except the ops in `op_block_list` and the nodes in `exclude`."""
    ensure_not_compressed(package, KIND)
    if package.manifest.precision != "fp32":
        raise OptimizeError(f"fp16 conversion needs an fp32 package; this one is {package.manifest.precision}")
    # onnxruntime's copy of the converter, unlike onnxconverter-common's, retypes the graph's own Cast-to-float
    # nodes, so transformer graphs (which cast masks) stay valid.
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = package.onnx_model
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(op_block_list), node_block_list=list(exclude) or None,
    )
    step = CompressionStep(
        kind=KIND,
        parameters={"op_block_list": list(op_block_list)},
        details={
            "kept_layers": sorted(exclude),
            "initializer_bytes_before": initializer_bytes(model),
            "initializer_bytes_after": initializer_bytes(converted),
        },
    )
    return derive(package, converted, step, precision="fp16" if not exclude else "mixed")
