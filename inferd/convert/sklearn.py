"""scikit-learn → ModelPackage through skl2onnx: classifiers (label + probabilities) and regressors.

Classifiers are converted with `zipmap=False`, so probabilities come out as one
float tensor per batch rather than a list of dicts, which is what the runtimes,
the V2 protocol and top-k ranking take. Fidelity compares `predict_proba` (or
`predict` for regressors) with the package, and predicted labels must match exactly.

scikit-learn and skl2onnx are the `sklearn` extra; loading a pickled estimator
from a file runs code from that file, so it is done only when the caller says so.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from inferd.convert.assemble import classifier_for, make_package, output_specs, require_fidelity
from inferd.convert.extras import require
from inferd.convert.fidelity import compare_outputs
from inferd.convert.prepare import Progress, no_progress, prepare_graph, rename_values
from inferd.convert.reference import run_onnx
from inferd.convert.samples import sample_feeds
from inferd.errors import ConversionError
from inferd.manifest import Source
from inferd.package import ModelPackage
from inferd.types import TensorType

INPUT = "input"
_TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def convert_sklearn(
    estimator: Any,
    *,
    sample_inputs: np.ndarray | None = None,
    classifier_labels: Sequence[str] | None = None,
    activation: str | None = None,
    metadata: Mapping[str, str] | None = None,
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
    progress: Progress = no_progress,
) -> ModelPackage:
    """Convert a fitted estimator or pipeline that takes a 2-D float matrix.

    `sample_inputs` are rows of real data (n_samples x n_features) for the fidelity
    check; without them, standard-normal rows are used, which is fine for linear
    models and poor for trees (whose thresholds sit where the data is). A
    classifier's output is `predict_proba`, probabilities already: its activation
    is 'none' unless `activation` says otherwise.
    """
    to_onnx = require("skl2onnx", "sklearn").to_onnx
    from sklearn.base import is_classifier, is_regressor

    features = getattr(estimator, "n_features_in_", None)
    if features is None:
        raise ConversionError(f"{type(estimator).__name__} is not fitted (no n_features_in_); fit it first")
    classifier = is_classifier(estimator)
    if not classifier and not is_regressor(estimator):
        raise ConversionError(f"{type(estimator).__name__} is neither a classifier nor a regressor; "
                              "inferd converts estimators with predict (and predict_proba)")
    spec = TensorType(name=INPUT, shape=(-1, int(features)), dtype="float32")
    rows = np.asarray(sample_inputs, dtype=np.float32) if sample_inputs is not None else sample_feeds([spec])[INPUT]
    if rows.ndim != 2 or rows.shape[1] != features:
        raise ConversionError(f"sample_inputs must be a matrix with {features} columns, got shape {rows.shape}")
    progress(f"converting with skl2onnx {version('skl2onnx')}")
    try:
        proto = to_onnx(estimator, rows[:1], options={"zipmap": False} if classifier else None,
                        target_opset=_TARGET_OPSET)
    except (RuntimeError, NameError, ValueError, TypeError) as exc:  # skl2onnx's "no converter for..." and option errors
        raise ConversionError(f"skl2onnx {version('skl2onnx')} cannot convert {type(estimator).__name__}: {exc}") from None
    rename_values(proto, {proto.graph.input[0].name: INPUT})
    prepared = prepare_graph(proto, framework="sklearn", simplify=False, progress=progress)

    progress("measuring fidelity against scikit-learn")
    candidate = run_onnx(prepared.model, {INPUT: rows})
    names = [o.name for o in prepared.model.graph.output]
    if classifier:
        # Labels compare as class indices, so string class names are checked exactly too.
        index = {str(c): i for i, c in enumerate(estimator.classes_)}
        reference = [estimator.predict_proba(rows), _indices(estimator.predict(rows), index)]
        compared = [candidate[names.index("probabilities")], _indices(candidate[names.index("label")], index)]
        reference_name = f"scikit-learn {version('scikit-learn')} predict_proba and predict"
    else:
        reference = [np.asarray(estimator.predict(rows)).reshape(len(rows), -1)]
        compared = [candidate[0].reshape(len(rows), -1)]
        reference_name = f"scikit-learn {version('scikit-learn')} predict"
    fidelity = compare_outputs(reference, compared, reference_name=reference_name,
                               runtime_name="onnxruntime cpu fp32", tolerance=tolerance)
    require_fidelity(fidelity, allow_fidelity_loss=allow_fidelity_loss, source="scikit-learn",
                     hint="float32 rounding moves tree thresholds: raise tolerance if labels still agree")
    outputs = output_specs(prepared.model, candidate, batch_dynamic=prepared.batch_dynamic)
    labels = _labels(estimator, classifier_labels) if classifier else None
    return make_package(
        prepared.model,
        inputs=prepared.inputs,
        outputs=outputs,
        classifier=classifier_for(prepared.model, outputs, labels, output="probabilities",
                                  activation=activation or ("none" if labels else None)),
        metadata=metadata,
        default_name=type(_final_step(estimator)).__name__.lower(),
        source=Source(framework=f"scikit-learn (via skl2onnx {version('skl2onnx')})",
                      framework_version=version("scikit-learn")),
        fidelity=fidelity,
    )


def load_pickled_estimator(path: str | os.PathLike[str], *, allow_pickle: bool) -> Any:
    """Unpickle an estimator saved with pickle or joblib, which executes code from the file: only when asked."""
    path = Path(path)
    if not allow_pickle:
        raise ConversionError(
            f"{path} is a pickle: loading it runs whatever code it holds, so inferd does not open it by itself; "
            "if you trust the file, pass allow_pickle=True (--allow-pickle)"
        )
    try:
        if path.suffix.lower() == ".joblib":
            import joblib

            return joblib.load(path)
        with path.open("rb") as file:
            return pickle.load(file)
    except Exception as exc:  # unpickling raises anything the pickled classes raise
        raise ConversionError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from None


def _labels(estimator: Any, given: Sequence[str] | None) -> list[str]:
    classes = [str(c) for c in getattr(estimator, "classes_", [])]
    if given is None:
        return classes
    if len(given) != len(classes):
        raise ConversionError(f"{len(given)} labels were given but the classifier has {len(classes)} classes {classes}")
    return list(given)


def _indices(labels: np.ndarray, index: dict[str, int]) -> np.ndarray:
    return np.array([index.get(str(label), -1) for label in np.asarray(labels).reshape(-1)])


def _final_step(estimator: Any) -> Any:
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator
