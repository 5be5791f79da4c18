"""When a reduced-precision answer is still the same answer: a tolerance that fits each kind of output.

One absolute tolerance cannot serve every model: a classifier cares whether its
top answer changes, a probability map whether pixels change side of the
threshold, a detector whether its boxes move. So each output is judged by what
it is, measured on its fp32 reference values:

- **classes**: the manifest's classifier output, or any output whose rows along
  the last axis are already probabilities that sum to 1 (a softmax, such as a
  CTC recogniser's per-step characters). The top-1 must stay the same on every
  row where fp32's top answer leads the second by `CLEAR_MARGIN` in probability
  (closer calls may go either way: no precision can promise them), and no
  probability may move more than `PROBABILITY_ERROR`.
- **probabilities**: other outputs whose values all lie in [0, 1] (sigmoid
  scores, probability maps). At most `FLIP_BUDGET` as many values may change
  side of `THRESHOLD` as fp32 puts above it. Noise far from the threshold
  changes no decision, so the largest move is reported but does not decide.
- **values**: anything else (box coordinates, embeddings, regressions). The
  largest error relative to the output's largest magnitude stays within
  `RELATIVE_ERROR` (a box on a 320-pixel input moves less than 3.2 px) and the
  signal-to-noise ratio stays at or above `MIN_SNR_DB`.

These are the bounds inferd uses to decide whether `Precision.AUTO` may keep a
reduced precision; the same metrics describe compression in reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

CLEAR_MARGIN = 0.05
"""fp32's top probability must lead the second by this much for a row's top-1 to be binding."""
PROBABILITY_ERROR = 0.05
"""Largest change of a class probability accepted (5 points: a confident answer stays confident)."""
THRESHOLD = 0.5
"""Where a [0, 1] output is read as yes/no (a mask pixel, a detection score)."""
FLIP_BUDGET = 0.005
"""Values that change side of THRESHOLD, as a fraction of those fp32 puts above it."""
RELATIVE_ERROR = 0.01
"""Largest error relative to the largest magnitude of the output."""
MIN_SNR_DB = 40.0
"""Signal-to-noise ratio, in dB, that other outputs keep (40 dB: the error has 1% of the signal's amplitude)."""

OutputKind = Literal["classes", "probabilities", "values"]
_ROW_SUM_SLACK = 1e-3


@dataclass(frozen=True)
class OutputAgreement:
    """How one output of a candidate compares with its reference, and whether that is within tolerance."""

    output: str
    kind: OutputKind
    relative_error: float
    snr_db: float | None
    """None when the candidate is exact (an infinite ratio)."""
    cosine: float
    passed: bool
    reason: str
    top1_agreement: float | None = None
    """Over the rows where the reference's top answer is clear (see CLEAR_MARGIN)."""
    clear_rows: int | None = None
    max_probability_error: float | None = None
    threshold_flips: float | None = None
    """Values that changed side of THRESHOLD per value the reference puts above it."""

    def as_dict(self) -> dict[str, Any]:
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in asdict(self).items()}


def output_kind(reference: np.ndarray, *, classifier_activation: str | None = None) -> OutputKind:
    """What an output is, from the manifest (a classifier) or from its fp32 values."""
    if classifier_activation is not None:
        return "classes"
    values = np.asarray(reference, dtype=np.float64)
    if values.size == 0 or not np.all(np.isfinite(values)):
        return "values"
    if values.min() >= 0.0 and values.max() <= 1.0:
        if values.ndim >= 2 and values.shape[-1] > 1 and np.allclose(values.sum(-1), 1.0, atol=_ROW_SUM_SLACK):
            return "classes"
        return "probabilities"
    return "values"


def compare(
    output: str, reference: np.ndarray, candidate: np.ndarray, *, classifier_activation: str | None = None
) -> OutputAgreement:
    """Judge `candidate` against `reference` for one output; `classifier_activation` marks a classifier output
    and says how its scores become probabilities ("softmax", "sigmoid" or "none")."""
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(candidate, dtype=np.float64).reshape(ref.shape)
    kind = output_kind(ref, classifier_activation=classifier_activation)
    general = _general(ref, got)
    if not np.all(np.isfinite(got)):
        return OutputAgreement(output, kind, **general, passed=False, reason="the candidate gives NaN or infinity")
    if kind == "classes":
        return _classes(output, ref, got, classifier_activation or "none", general)
    if kind == "probabilities":
        return _probabilities(output, ref, got, general)
    snr = general["snr_db"]
    failures = []
    if general["relative_error"] > RELATIVE_ERROR:
        failures.append(f"largest error {100 * general['relative_error']:.2f}% of the output's range "
                        f"(limit {100 * RELATIVE_ERROR:g}%)")
    if snr is not None and snr < MIN_SNR_DB:
        failures.append(f"SNR {snr:.1f} dB (limit {MIN_SNR_DB:g} dB)")
    return OutputAgreement(output, kind, **general, passed=not failures,
                           reason="; ".join(failures) or "within relative error and SNR bounds")


def compare_all(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], *,
    classifier: tuple[str, str] | None = None,
) -> list[OutputAgreement]:
    """Every output of `reference`; `classifier` is (output name, activation) from the manifest."""
    return [compare(name, value, candidate[name],
                    classifier_activation=classifier[1] if classifier and classifier[0] == name else None)
            for name, value in reference.items()]


def _general(ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    error = got - ref
    scale = float(np.max(np.abs(ref), initial=0.0))
    largest = float(np.max(np.abs(error), initial=0.0)) if np.all(np.isfinite(error)) else float("inf")
    noise = float(np.sum(error * error)) if np.all(np.isfinite(error)) else float("inf")
    signal = float(np.sum(ref * ref))
    snr = None if noise == 0 else snr_db(signal, noise)
    norms = float(np.linalg.norm(ref) * np.linalg.norm(got)) if np.all(np.isfinite(got)) else 0.0
    cosine = 1.0 if noise == 0 else (float(np.sum(ref * got)) / norms if norms > 0 else 0.0)
    return {"relative_error": largest / scale if scale > 0 else largest, "snr_db": snr, "cosine": cosine}


def snr_db(signal: float, noise: float) -> float:
    """Signal-to-noise ratio in dB from sums of squares; infinite for identical outputs."""
    if noise == 0:
        return float("inf")
    return float("-inf") if signal == 0 else 10 * float(np.log10(signal / noise))


def _classes(output: str, ref: np.ndarray, got: np.ndarray, activation: str, general: dict[str, Any]) -> OutputAgreement:
    ref_p = _probabilities_of(ref, activation).reshape(-1, ref.shape[-1])
    got_p = _probabilities_of(got, activation).reshape(-1, ref.shape[-1])
    ordered = np.sort(ref_p, axis=1)
    clear = (ordered[:, -1] - ordered[:, -2]) >= CLEAR_MARGIN if ref_p.shape[1] > 1 else np.ones(len(ref_p), bool)
    same = ref_p.argmax(1) == got_p.argmax(1)
    agreement = float(np.mean(same[clear])) if clear.any() else 1.0
    probability_error = float(np.max(np.abs(ref_p - got_p), initial=0.0))
    failures = []
    if agreement < 1.0:
        failures.append(f"top-1 changed on {int(np.sum(~same & clear))} of {int(clear.sum())} rows with a clear answer")
    if probability_error > PROBABILITY_ERROR:
        failures.append(f"a probability moved by {probability_error:.3f} (limit {PROBABILITY_ERROR:g})")
    return OutputAgreement(
        output, "classes", **general, passed=not failures,
        reason="; ".join(failures) or "same top-1 on every clear row, probabilities within bounds",
        top1_agreement=agreement, clear_rows=int(clear.sum()), max_probability_error=probability_error,
    )


def _probabilities(output: str, ref: np.ndarray, got: np.ndarray, general: dict[str, Any]) -> OutputAgreement:
    above = ref > THRESHOLD
    flips = int(np.sum(above != (got > THRESHOLD)))
    rate = flips / max(int(above.sum()), 1)
    passed = rate <= FLIP_BUDGET
    reason = (f"{flips} values changed side of {THRESHOLD:g}, {100 * rate:.2f}% of the {int(above.sum())} fp32 puts "
              f"above it (limit {100 * FLIP_BUDGET:g}%)")
    return OutputAgreement(output, "probabilities", **general, passed=passed, reason=reason,
                           max_probability_error=float(np.max(np.abs(ref - got), initial=0.0)), threshold_flips=rate)


def _probabilities_of(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-scores))
    return scores
