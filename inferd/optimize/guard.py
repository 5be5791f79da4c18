"""The accuracy guard: keep what a compression hurts most (layers; for int8 also activations) at full precision.

Sensitivity is measured by compressing one candidate (a layer, or for int8 also an
activation) at a time and taking the SNR of the judged output (the classifier's,
else the probability output that suffers most) against the uncompressed model's,
so it reflects what the candidate does to predictions, not just how large its
weight error is. The shortest prefix of that ranking that meets the budget is
then found by bisection: a few trials rather than one per candidate
(EfficientNet-Lite0's int8 has 143). The uncompressed model runs over the
evaluation set once; every trial replays its outputs batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np

from inferd.optimize._graph import layer_names
from inferd.optimize.errors import AccuracyBudgetError, OptimizeError
from inferd.optimize.evalset import EvalSet
from inferd.optimize.evaluate import Reference
from inferd.optimize.metrics import OutputFidelity, judged
from inferd.optimize.progress import task
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
    reference = Reference(package, eval_set)
    baseline = score(reference.compare(package.onnx_model))

    def drop_of(candidate: ModelPackage) -> float:
        return baseline - score(reference.compare(candidate.onnx_model, "a trial", quiet=True))

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
    advance = task("ranking what the compression hurts most", len(names))
    sensitivity = {}
    for name in names:
        trial = reference.compare(compress(package, set(names) - {name}).onnx_model, name, quiet=True)
        sensitivity[name] = _snr(trial)
        advance(1)
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


def score(fidelity: list[OutputFidelity]) -> float:
    """Points (0-100) the guard budgets: the classifier's accuracy when labelled, else its top-1 agreement with
    the reference; without a classifier, 100 less the percentage of thresholded values that flipped."""
    output = judged(fidelity)
    if output is None:
        raise OptimizeError(
            "--max-drop budgets points of top-1 or of thresholded probabilities, and this model has neither a "
            "classifier output (convert it with --labels) nor an output whose values lie in [0, 1]; "
            "use --report to see what each step costs instead"
        )
    m = output.metrics
    if output.kind == "classifier":
        return 100 * m.get("accuracy", m["top1_agreement"])
    return 100 * max(0.0, 1 - m["crossed_ratio"])


def _snr(fidelity: list[OutputFidelity]) -> float:
    output = judged(fidelity)
    assert output is not None  # `score` refused models without one before any ranking
    return output.metrics.get("scores_snr_db", output.metrics["snr_db"])


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
