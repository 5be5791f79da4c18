"""Put a prepared graph, its specs, labels, metadata and fidelity together into a ModelPackage.

Shared by the converters that start from a graph (ONNX files, TensorFlow through
tf2onnx, scikit-learn through skl2onnx), so every source gets the same output
specs, classifier detection, metadata checks and fidelity gate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from inferd.convert.inputs import Spec, dtype_name
from inferd.errors import ConversionError, FidelityError
from inferd.manifest import Classifier, Fidelity, Manifest, Source
from inferd.package import ModelPackage
from inferd.types import TensorType

METADATA_KEYS = ("name", "version", "author", "license", "description")
_ALREADY_PROBABILITIES = {"Softmax": "none", "Sigmoid": "none", "LogSoftmax": "none"}


def output_specs(model: onnx.ModelProto, actual: Sequence[np.ndarray], *, batch_dynamic: bool) -> list[TensorType]:
    """Output specs from the graph's declared shapes, falling back to the shapes a real run produced."""
    specs = []
    for value, array in zip(model.graph.output, actual, strict=True):
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim]
        else:
            shape = list(np.shape(array))
        if batch_dynamic and shape:
            shape[0] = -1
        specs.append(TensorType(name=value.name, shape=tuple(shape), dtype=dtype_name(tensor.elem_type, value.name)))
    return specs


def classifier_for(
    model: onnx.ModelProto,
    outputs: Sequence[TensorType],
    labels: Sequence[str] | None,
    *,
    output: str | None = None,
    activation: str | None = None,
) -> Classifier | None:
    """The output whose last dimension has one score per label; whether scores still need a softmax."""
    if not labels:
        return None
    if output is None:
        fits = [s.name for s in outputs if len(s.shape) == 2 and s.shape[-1] == len(labels) and s.dtype.startswith("float")]
        if len(fits) != 1:
            raise ConversionError(
                f"{len(labels)} labels were given but {'no' if not fits else 'more than one'} output has "
                f"{len(labels)} float scores per sample ({[f'{s.name} {list(s.shape)}' for s in outputs]}); "
                "check the labels file, or name the classifier output"
            )
        output = fits[0]
    elif output not in {s.name for s in outputs}:
        raise ConversionError(f"classifier output {output!r} is not among the outputs {[s.name for s in outputs]}")
    if activation is None:
        producer = next((node.op_type for node in model.graph.node if output in node.output), "")
        activation = _ALREADY_PROBABILITIES.get(producer, "softmax")
    return Classifier(output=output, labels=list(labels), activation=activation)


def require_fidelity(fidelity: Fidelity, *, allow_fidelity_loss: bool, source: str, hint: str = "") -> None:
    """Refuse a package that computes something else than its source, unless the user accepts it knowingly."""
    if fidelity.passed or allow_fidelity_loss:
        return
    raise FidelityError(
        f"the converted model differs from {source}: max abs diff {fidelity.max_abs_diff:.3g} "
        f"(tolerance {fidelity.tolerance:g}), top-1 agreement {fidelity.top1_agreement}; "
        f"{hint + ', or ' if hint else ''}pass allow_fidelity_loss=True (--allow-fidelity-loss) to keep it anyway"
    )


def make_package(
    model: onnx.ModelProto,
    *,
    inputs: Sequence[Spec],
    outputs: Sequence[TensorType],
    classifier: Classifier | None,
    metadata: Mapping[str, str] | None,
    default_name: str,
    source: Source,
    fidelity: Fidelity,
) -> ModelPackage:
    meta = dict(metadata or {})
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if unknown:
        raise ConversionError(f"unknown metadata keys {unknown}; use {', '.join(METADATA_KEYS)}")
    name = meta.get("name") or package_name(default_name)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", name):
        raise ConversionError(f"model name {name!r} is not allowed: use letters, digits, '_', '.', '-' (up to 128)")
    manifest = Manifest(
        name=name,
        version=meta.get("version") or "1",
        author=meta.get("author", ""),
        license=meta.get("license", ""),
        description=meta.get("description", ""),
        source=source,
        inputs=list(inputs),
        outputs=list(outputs),
        classifier=classifier,
        fidelity=fidelity,
    )
    return ModelPackage(manifest, model=model)


def package_name(text: str) -> str:
    """A valid package name from a file or class name: `My Model (v2).onnx` -> `My-Model-v2`."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-._")[:128]
    return cleaned or "model"
