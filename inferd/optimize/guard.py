"""The accuracy guard: keep what a compression hurts most (layers; for int8 also activations) at full precision.

Sensitivity is measured by compressing one candidate (a layer, or for int8 also an
activation) at a time and taking the SNR of the model's output against the
uncompressed model's, so it reflects what the candidate does to predictions, not
just how large its weight error is. The shortest prefix of that ranking that
meets the budget is then found by bisection: a few trials rather than one per
candidate (EfficientNet-Lite0's int8 has 143).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from inferd.optimize._graph import layer_names
from inferd.optimize.errors import AccuracyBudgetError
from inferd.optimize.evalset import EvalSet
from inferd.optimize.evaluate import fidelity, predict, score
from inferd.package import ModelPackage

Compression = Callable[[ModelPackage, Collection[str]], ModelPackage]


def guarded(
    package: ModelPackage,
    compress: Compression,
    eval_set: EvalSet,
    max_drop: float,
    candidates: Sequence[str] | None = None,
) -> ModelPackage:
    """`compress(package, exclude)` with as few `candidates` (by default the weight layers) excluded as keep the
    drop within `max_drop` points."""
    reference = predict(package.onnx_model, eval_set)
    baseline = score(reference, reference, eval_set.labels)

    def drop_of(candidate: ModelPackage) -> float:
        return baseline - score(reference, predict(candidate.onnx_model, eval_set), eval_set.labels)

    candidate = compress(package, ())
    first_drop = drop_of(candidate)
    if first_drop <= max_drop:
        return _record(candidate, baseline, first_drop, first_drop, max_drop, [])
    names = list(layer_names(package.onnx_model) if candidates is None else candidates)
    every = compress(package, names)
    if (drop := drop_of(every)) > max_drop:
        raise AccuracyBudgetError(
            f"even with all {len(names)} candidates kept at full precision the score drops {drop:.2f} points "
            f"(from {baseline:.2f}; {first_drop:.2f} with everything compressed), over max_drop={max_drop}: "
            "the loss comes from outside them (e.g. activation quantization); choose a milder compression"
        )
    sensitivity = {
        name: fidelity(reference, predict(compress(package, set(names) - {name}).onnx_model, eval_set))["snr_db"]
        for name in names
    }
    ranked = sorted(names, key=lambda name: sensitivity[name])
    failing, holding, best = 0, len(ranked), (every, drop)  # the first `holding` ranked kept meet the budget
    while holding - failing > 1:
        middle = (failing + holding) // 2
        candidate = compress(package, ranked[:middle])
        if (middle_drop := drop_of(candidate)) <= max_drop:
            holding, best = middle, (candidate, middle_drop)
        else:
            failing = middle
    return _record(best[0], baseline, first_drop, best[1], max_drop, ranked[:holding], sensitivity)


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
        "drop_all_compressed": round(first_drop, 3),
        "drop": round(drop, 3),
        "kept": kept,  # most sensitive first
        "output_snr_db_by_candidate": {k: round(v, 2) for k, v in (sensitivity or {}).items() if np.isfinite(v)},
    }
    return candidate
