"""The accuracy guard: keep the layers a compression hurts most at full precision until the budget holds.

Sensitivity is measured by compressing one layer at a time and taking the SNR of
the model's output against the uncompressed model's, so it reflects what the
layer does to predictions, not just how large its weight error is.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np

from inferd.optimize._graph import layer_names
from inferd.optimize.errors import AccuracyBudgetError
from inferd.optimize.evalset import EvalSet
from inferd.optimize.evaluate import fidelity, predict, score
from inferd.package import ModelPackage

Compression = Callable[[ModelPackage, Collection[str]], ModelPackage]


def guarded(package: ModelPackage, compress: Compression, eval_set: EvalSet, max_drop: float) -> ModelPackage:
    """`compress(package, exclude)` with as few layers excluded as keep the drop within `max_drop` points."""
    reference = predict(package.onnx_model, eval_set)
    baseline = score(reference, reference, eval_set.labels)

    def drop_of(candidate: ModelPackage) -> float:
        return baseline - score(reference, predict(candidate.onnx_model, eval_set), eval_set.labels)

    candidate = compress(package, ())
    first_drop = drop = drop_of(candidate)
    if drop <= max_drop:
        return _record(candidate, baseline, first_drop, drop, max_drop, [])
    layers = layer_names(package.onnx_model)
    sensitivity = {
        layer: fidelity(reference, predict(compress(package, set(layers) - {layer}).onnx_model, eval_set))["snr_db"]
        for layer in layers
    }
    ranked = sorted(layers, key=lambda layer: sensitivity[layer])
    kept: list[str] = []
    for layer in ranked:
        kept.append(layer)
        candidate = compress(package, kept)
        drop = drop_of(candidate)
        if drop <= max_drop:
            return _record(candidate, baseline, first_drop, drop, max_drop, kept, sensitivity)
    raise AccuracyBudgetError(
        f"even with all {len(layers)} layers kept at full precision the score drops {drop:.2f} points "
        f"(from {baseline:.2f}; {first_drop:.2f} with every layer compressed), over max_drop={max_drop}: "
        "the loss comes from outside the layers (e.g. activation quantization); choose a milder compression"
    )


def _record(
    candidate: ModelPackage,
    baseline: float,
    first_drop: float,
    drop: float,
    max_drop: float,
    kept: list[str],
    sensitivity: dict[str, float] | None = None,
) -> ModelPackage:
    """The guard's outcome goes into the step's details so `inferd info` can show what was traded."""
    details = candidate.manifest.compression[-1].details
    details["accuracy_guard"] = {
        "max_drop": max_drop,
        "baseline_score": round(baseline, 3),
        "drop_all_layers": round(first_drop, 3),
        "drop": round(drop, 3),
        "kept_layers": kept,
        "output_snr_db_by_layer": {k: round(v, 2) for k, v in (sensitivity or {}).items() if np.isfinite(v)},
    }
    return candidate
