"""Put a prepared graph, its specs, labels, metadata and fidelity together into a ModelPackage.

Shared by the converters that start from a graph (ONNX files, TensorFlow through
tf2onnx, scikit-learn through skl2onnx), so every source gets the same output
specs, classifier detection, metadata checks and fidelity gate; PyTorch and
TorchScript use the same classifier detection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast, get_args

import numpy as np
import onnx

from inferd.convert.inputs import Spec, dtype_name
from inferd.convert.samples import representative_samples
from inferd.errors import ConversionError, FidelityError
from inferd.io.classify import Activation
from inferd.manifest import Classifier, Fidelity, Manifest, Source
from inferd.package import ModelPackage
from inferd.types import TensorType

METADATA_KEYS = ("name", "version", "author", "license", "description")
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
_FINAL_ACTIVATION: dict[str, Activation] = {"Softmax": "none", "Sigmoid": "none", "LogSoftmax": "softmax"}
"""What inferd applies after each probability op: nothing after softmax or sigmoid, and a softmax after
log-softmax, since the softmax of log-probabilities is exactly the probabilities."""
_KEEPS_VALUES = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast", "Dropout",
                           "QuantizeLinear", "DequantizeLinear"})
"""Ops that move, retype or round values without changing what they mean: probabilities stay probabilities."""
_SUM_TOLERANCE = 1e-3


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
    sample_outputs: Sequence[np.ndarray] = (),
) -> Classifier | None:
    """The output whose last dimension has one score per label, and what turns its scores into probabilities.

    `sample_outputs` (the outputs' values on the conversion samples, in the order
    of `outputs`) let `detect_activation` recognise a softmax the graph's
    structure hides; `activation` overrides detection.
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ConversionError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}: say 'none' when the "
                              "classifier output already holds probabilities, else the function that makes them")
    if not labels:
        if activation is not None:
            raise ConversionError(f"activation {activation!r} says how a classifier's scores become probabilities, "
                                  "but this model has no classifier; give its labels too (--labels), or leave "
                                  "the activation out")
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
        values = dict(zip((s.name for s in outputs), sample_outputs, strict=False)).get(output)
        activation = detect_activation(model, output, values)
    return Classifier(output=output, labels=list(labels), activation=cast(Activation, activation))


def detect_activation(model: onnx.ModelProto, output: str, values: np.ndarray | None) -> Activation:
    """What inferd must apply to `output` to get probabilities: read from the graph, confirmed by the values.

    The graph decides when it visibly ends in a probability op (looking through
    ops that only move or round values): a softmax over another axis than the
    rows is still no place for a second softmax, whatever the samples show. The
    values decide when the graph hides its activation (a softmax written out as
    exp / sum, a custom layer): rows that are non-negative and sum to 1 already
    are probabilities. Values within [0, 1] alone prove nothing (logits can fall
    there), so only a visible sigmoid makes sigmoid scores probabilities. With
    neither, the scores are logits and get a softmax.
    """
    final = _final_op(model, output)
    if final in _FINAL_ACTIVATION:
        return _FINAL_ACTIVATION[final]
    if values is not None and _are_distributions(values):
        return "none"
    return "softmax"


def _final_op(model: onnx.ModelProto, output: str) -> str:
    """The op type that computes `output`'s values, looking back through ops in _KEEPS_VALUES."""
    producers = {name: node for node in model.graph.node for name in node.output}
    seen: set[str] = set()
    node = producers.get(output)
    while node is not None and node.op_type in _KEEPS_VALUES and node.input and node.input[0] not in seen:
        seen.add(node.input[0])
        node = producers.get(node.input[0])
    return node.op_type if node is not None else ""


def _are_distributions(values: np.ndarray) -> bool:
    """Whether every row (batch first, the rest flattened) is non-negative and sums to 1."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < 1 or array.size == 0 or not np.all(np.isfinite(array)):
        return False
    rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)
    return bool(rows.min() >= -_SUM_TOLERANCE and np.allclose(rows.sum(axis=1), 1.0, rtol=0, atol=_SUM_TOLERANCE))


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
    return ModelPackage(manifest, model=model, samples=representative_samples(inputs))


def package_name(text: str) -> str:
    """A valid package name from a file or class name: `My Model (v2).onnx` -> `My-Model-v2`."""
    cleaned = re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-._")[:128]
    return cleaned or "model"


def served_name(directory: str | Path) -> str:
    """The name a server would give the package written to `directory`: the name users type in URLs.

    A repository serves `repo/<name>/` and `repo/<name>/<version>/` as `<name>`, so
    a directory named by a number alone is a version and its parent names the model.
    """
    path = Path(directory).resolve()
    return package_name(path.parent.name if path.name.isdigit() else path.name)
