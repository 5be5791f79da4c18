"""Bring any ONNX graph (a file, or what tf2onnx and skl2onnx produce) into the shape a package needs.

The steps, in order: operators every runtime here can run (named when not), the
full ONNX checker, an opset and IR version that every supported ONNX Runtime and
OpenVINO reads, the user's input description, a batch dimension named `batch`
that really is dynamic (proved by running a batch of 2), shape inference, and
simplification. Each step that can fail says what to change.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from inferd.convert.inputs import ChannelLayout, ImagePreprocessing, Spec, graph_inputs, resolve_inputs
from inferd.convert.ops import check_runs, check_supported_ops
from inferd.convert.samples import sample_feeds
from inferd.errors import ConversionError

# The range every backend inferd supports reads: onnxruntime>=1.20 runs opsets 7..21 and IR <= 10
# (newer releases read more, but a package must load on every supported installation).
MIN_OPSET, MAX_OPSET = 7, 21
UPGRADE_OPSET = 13  # an old model goes here: the first opset the optimize stage works with
MAX_IR = 10
BATCH = "batch"

Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    """The default progress callback: converting is quiet unless a caller shows steps."""


@dataclass
class PreparedGraph:
    model: onnx.ModelProto
    inputs: list[Spec]
    batch_dynamic: bool
    simplified: bool


def prepare_graph(
    model: onnx.ModelProto,
    *,
    framework: str = "onnx",
    inputs: Sequence[Spec] | None = None,
    image: ImagePreprocessing | None = None,
    input_shape: Sequence[int] | None = None,
    default_layout: ChannelLayout = "NCHW",
    opset: int | None = None,
    simplify: bool = True,
    progress: Progress = no_progress,
) -> PreparedGraph:
    progress("checking operators and graph")
    check_supported_ops(model, framework=framework)
    model = _deduplicate_opsets(copy.deepcopy(model))
    check_graph(model)
    model = lower_ir(convert_opset(model, opset))
    check_runs(model, framework=framework)
    specs = resolve_inputs(graph_inputs(model), inputs=inputs, image=image, input_shape=input_shape,
                           default_layout=default_layout)
    _refuse_scalar_inputs(specs)
    model = _fix_input_dims(model, specs)
    progress("making the batch dimension dynamic")
    model, dynamic = dynamic_batch(model, specs)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    simplified = False
    if simplify:
        progress("simplifying the graph (onnxslim)")
        model, simplified = simplify_graph(model)
    check_runs(model, framework=framework)
    batch = -1 if dynamic else _fixed_batch(model)
    specs = [spec.model_copy(update={"shape": (batch, *spec.shape[1:])}) for spec in specs]
    return PreparedGraph(model=model, inputs=specs, batch_dynamic=dynamic, simplified=simplified)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_graph(model: onnx.ModelProto) -> None:
    """The full ONNX checker, strict shape and type inference included."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"the model is not a valid ONNX graph: {_first_lines(exc)}") from None


def convert_opset(model: onnx.ModelProto, opset: int | None) -> onnx.ModelProto:
    """Move the default-domain opset into the backends' range (or to `opset` when the user asks for one)."""
    current = default_opset(model)
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConversionError(f"opset {opset} is outside what the backends take; choose {MIN_OPSET}..{MAX_OPSET}")
    target = opset or (UPGRADE_OPSET if current < MIN_OPSET else MAX_OPSET if current > MAX_OPSET else current)
    if target == current:
        return model
    try:
        # the adapters for old broadcasting rules need every tensor's shape
        converted = onnx.version_converter.convert_version(onnx.shape_inference.infer_shapes(model), target)
    except Exception as exc:  # the converter raises RuntimeError and onnx's C++ errors alike
        raise ConversionError(
            f"converting the model from opset {current} to {target} failed: {_first_lines(exc)}; "
            f"re-export it from the source framework at an opset in {MIN_OPSET}..{MAX_OPSET}, "
            "or choose another target with --opset"
        ) from None
    check_graph(converted)
    return converted


def lower_ir(model: onnx.ModelProto) -> onnx.ModelProto:
    """The IR version says which file format features are used; new onnx writers stamp one older runtimes refuse."""
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(min(model.ir_version, MAX_IR), needed)
    return model


def dynamic_batch(model: onnx.ModelProto, specs: Sequence[Spec]) -> tuple[onnx.ModelProto, bool]:
    """Name the leading dimension of every input and output `batch`, if a batch of 2 then really runs.

    A graph exported at batch 1 often still computes per sample (it just says 1);
    one that reshapes with a hard-coded 1 does not, and keeps its fixed batch.
    """
    values = [*_graph_input_values(model), *model.graph.output]
    if any(len(v.type.tensor_type.shape.dim) == 0 for v in values):
        return model, False
    candidate = copy.deepcopy(model)
    del candidate.graph.value_info[:]  # inferred with the old batch; shape inference redoes them
    for value in [*_graph_input_values(candidate), *candidate.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = BATCH
    try:
        session = check_runs(candidate)
        feeds = sample_feeds([spec.model_copy(update={"shape": (-1, *spec.shape[1:])}) for spec in specs], batch=2)
        outputs = session.run(None, feeds)
    except Exception:  # any failure means the graph is not batch-polymorphic
        return model, False
    if any(np.ndim(out) == 0 or np.shape(out)[0] != 2 for out in outputs):
        return model, False
    return candidate, True


def simplify_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """Constant folding and operator fusion with onnxslim; a failure keeps the graph as it was."""
    import onnxslim

    try:
        slimmed = onnxslim.slim(copy.deepcopy(model))
    except Exception as exc:  # a third-party optimizer: its failure must not block a conversion
        warnings.warn(f"onnxslim could not simplify the model ({_first_lines(exc)}); kept it unsimplified",
                      stacklevel=2)
        return model, False
    if not isinstance(slimmed, onnx.ModelProto):
        return model, False
    return lower_ir(slimmed), True


def _graph_input_values(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _fix_input_dims(model: onnx.ModelProto, specs: Sequence[Spec]) -> onnx.ModelProto:
    """Write the sizes the user fixed (image height and width, say) into the graph, so backends see static shapes."""
    by_name = {spec.name: spec for spec in specs}
    changed = False
    for value in _graph_input_values(model):
        dims = value.type.tensor_type.shape.dim
        for axis, size in enumerate(by_name[value.name].shape):
            if axis > 0 and size > 0 and dims[axis].dim_value != size:
                dims[axis].dim_value = size
                changed = True
    if changed:
        del model.graph.value_info[:]
    return model


def _refuse_scalar_inputs(specs: Sequence[Spec]) -> None:
    """A package's inputs are tensors with a batch axis first; a rank-0 input (a sample rate, a flag) has none."""
    scalars = [f"{spec.name!r} ({spec.dtype})" for spec in specs if not spec.shape]
    if scalars:
        raise ConversionError(
            f"input {', '.join(scalars)} is a scalar; inferd feeds every input as a tensor with the batch first, "
            "so it cannot feed a scalar: make it a constant inside the model (it usually is one, such as a "
            "sample rate) or give it a batch axis, and export the model again"
        )


def _fixed_batch(model: onnx.ModelProto) -> int:
    dim = _graph_input_values(model)[0].type.tensor_type.shape.dim
    return dim[0].dim_value if dim and dim[0].dim_value > 0 else 1


def _deduplicate_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep one import per domain (the highest); some converters (skl2onnx) write the default domain twice."""
    versions: dict[str, int] = {}
    for opset in model.opset_import:
        domain = "" if opset.domain == "ai.onnx" else opset.domain
        versions[domain] = max(versions.get(domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in versions.items())
    return model


def _first_lines(exc: BaseException, count: int = 3) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines[:count]) or type(exc).__name__


def rename_values(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    """Rename graph inputs/outputs (and every reference to them) in place, e.g. `serving_default_image:0` -> `image`."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = mapping.get(value.name, value.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [mapping.get(name, name) for name in node.input]
        node.output[:] = [mapping.get(name, name) for name in node.output]
