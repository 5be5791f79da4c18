"""ONNX file → ModelPackage: checked, brought into the backends' opset/IR range, batch made dynamic, simplified.

The package's graph is not the file's graph (opset conversion and simplification
rewrite it), so fidelity compares the two on the same inputs: the original file
in ONNX Runtime, or in the ONNX specification's own reference evaluator when the
file is too old or too new for the installed ONNX Runtime to open.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from inferd.convert.assemble import classifier_for, make_package, output_specs, require_fidelity
from inferd.convert.fidelity import compare_outputs
from inferd.convert.inputs import ImagePreprocessing, Spec, graph_inputs
from inferd.convert.prepare import Progress, default_opset, lower_ir, no_progress, prepare_graph
from inferd.convert.reference import run_in_batches, run_onnx
from inferd.convert.samples import sample_feeds
from inferd.errors import ConversionError
from inferd.manifest import Source
from inferd.package import ModelPackage


def convert_onnx(
    model: str | os.PathLike[str] | onnx.ModelProto,
    *,
    inputs: Sequence[Spec] | None = None,
    image: ImagePreprocessing | None = None,
    input_shape: Sequence[int] | None = None,
    classifier_labels: Sequence[str] | None = None,
    classifier_output: str | None = None,
    activation: str | None = None,
    metadata: Mapping[str, str] | None = None,
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    opset: int | None = None,
    simplify: bool = True,
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
    progress: Progress = no_progress,
) -> ModelPackage:
    """Import an ONNX model, check it against the original on sample inputs, and return the package.

    `inputs` replaces the model's own input specs by name (an `ImageType` with its
    preprocessing, say); `image` marks an input as an image without restating its
    shape. `activation` says what turns the classifier's scores into probabilities
    ('softmax', 'sigmoid', or 'none' when they already are); without it, the graph
    and its outputs on the samples tell. Raises FidelityError when the package's
    outputs drift from the original file's beyond `tolerance`, unless
    `allow_fidelity_loss`.
    """
    progress("reading the ONNX file")
    original, default_name = load_onnx(model)
    prepared = prepare_graph(
        original, framework="onnx", inputs=inputs, image=image, input_shape=input_shape, opset=opset,
        simplify=simplify, progress=progress,
    )
    progress("measuring fidelity against the original file")
    samples = sample_feeds(prepared.inputs, sample_inputs)
    reference, reference_name = run_original(original, samples)
    converted = run_onnx(prepared.model, samples)
    fidelity = compare_outputs(reference, converted, reference_name=reference_name,
                               runtime_name="onnxruntime cpu fp32", tolerance=tolerance)
    require_fidelity(fidelity, allow_fidelity_loss=allow_fidelity_loss, source="the original ONNX file",
                     hint="try simplify=False (--no-simplify) or another opset" if prepared.simplified else "")
    outputs = output_specs(prepared.model, converted, batch_dynamic=prepared.batch_dynamic)
    producer = " ".join(p for p in (original.producer_name, original.producer_version) if p)
    return make_package(
        prepared.model,
        inputs=prepared.inputs,
        outputs=outputs,
        classifier=classifier_for(prepared.model, outputs, classifier_labels, output=classifier_output,
                                  activation=activation, sample_outputs=converted),
        metadata=metadata,
        default_name=default_name,
        source=Source(framework=f"onnx (from {producer})" if producer else "onnx",
                      framework_version=f"opset {default_opset(original)}, IR {original.ir_version}"),
        fidelity=fidelity,
    )


def load_onnx(model: str | os.PathLike[str] | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The model (external data included) and a default package name."""
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "model"
    path = Path(model)
    if not path.is_file():
        raise ConversionError(f"no ONNX file at {path}")
    try:
        proto = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ConversionError(f"{path} is not an ONNX model ({type(exc).__name__}: {exc}); check the file") from None
    except FileNotFoundError as exc:
        raise ConversionError(f"{path} refers to external data that is missing: {exc.filename}; copy it beside the "
                              "model") from None
    if not proto.graph.node:
        raise ConversionError(f"{path} holds no ONNX graph (an empty or foreign protobuf file)")
    return proto, path.stem


def run_original(original: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> tuple[list[np.ndarray], str]:
    """Outputs of the untouched graph: ONNX Runtime when it opens it (IR stamp lowered only), else onnx.reference."""
    try:
        return run_onnx(lower_ir(copy.deepcopy(original)), feeds), (
            f"original ONNX file in onnxruntime {ort.__version__} cpu fp32")
    except Exception as runtime_exc:  # ORT refuses opsets/IRs outside its range and old op versions; onnx's does not
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(original)
        fixed = any(spec.shape and spec.shape[0] == 1 for spec in graph_inputs(original))
        try:
            outputs = run_in_batches(lambda batch: [np.asarray(out) for out in evaluator.run(None, batch)], feeds,
                                     one_at_a_time=fixed)
        except Exception:  # both runtimes refuse the samples: their shapes or values are not what the model takes
            raise _samples_refused(feeds, runtime_exc) from None
        return outputs, f"original ONNX file in onnx.reference {onnx.__version__} (the ONNX spec's evaluator)"


def _samples_refused(feeds: Mapping[str, np.ndarray], exc: Exception) -> ConversionError:
    """Samples are drawn batch first with open sizes filled in; a model that takes neither says so here."""
    shapes = ", ".join(f"{name} {value.dtype} {list(value.shape)}" for name, value in feeds.items())
    said = " ".join(line.strip() for line in str(exc).strip().splitlines()[:3]) or type(exc).__name__
    return ConversionError(
        f"the original model does not run on sample inputs shaped like its inputs ({shapes}): {said}; inferd puts "
        "the batch on the first axis of every input and fills open sizes, so fix the sizes the model needs "
        "(--input-shape, or sample_inputs from Python); a model whose inputs are not batch-first (a recurrent "
        "state [layers, batch, size]) cannot be packaged"
    )
