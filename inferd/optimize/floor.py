"""The floor: how far below its parent a compressed model may fall before it is broken rather than smaller.

`inferd optimize` measures the package it is about to write against the
uncompressed one and refuses to write it below the floor (unless told to), so a
recipe that destroys a model fails loudly instead of exiting 0. The floor is
deliberately low, far under what a careful user accepts (`--max-drop` is the
tool for that): it catches the models that answer noise, not the ones that lost
a point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from inferd.optimize.errors import OptimizeError
from inferd.optimize.evalset import EvalSet
from inferd.optimize.evaluate import Reference
from inferd.optimize.metrics import OutputFidelity
from inferd.package import ModelPackage


@dataclass(frozen=True)
class Floor:
    """Each limit applies to every output that has the metric."""

    snr_db: float = 10.0  # output (or score channels) within 10 dB: the error is a third of the signal's magnitude
    top1_agreement: float = 0.5  # the classifier changes at most half of its answers
    crossed_ratio: float = 0.5  # at most half as many thresholded values flip as fp32 puts above the threshold

    def describe(self) -> str:
        return (f"SNR >= {self.snr_db:g} dB on every output (and its score channels), classifier top-1 agreement "
                f">= {self.top1_agreement:.0%}, values crossing the threshold <= {self.crossed_ratio:.0%} of those "
                "fp32 puts above it")


FLOOR = Floor()


def shortfalls(fidelity: Sequence[OutputFidelity], floor: Floor = FLOOR) -> list[str]:
    """What in `fidelity` is below `floor`, one line per metric; empty when the model is usable."""
    found = []
    for output in fidelity:
        m = output.metrics
        for key, what in (("snr_db", "SNR"), ("scores_snr_db", "SNR of the score channels")):
            if key in m and m[key] < floor.snr_db:
                found.append(f"{output.name}: {what} {m[key]:.1f} dB is below {floor.snr_db:g} dB")
        if "top1_agreement" in m and m["top1_agreement"] < floor.top1_agreement:
            found.append(f"{output.name}: top-1 agreement {m['top1_agreement']:.1%} is below "
                         f"{floor.top1_agreement:.0%}")
        if output.kind != "classifier" and m.get("crossed_ratio", 0.0) > floor.crossed_ratio:
            found.append(f"{output.name}: {int(m['crossed'])} values crossed the {m['threshold']:g} threshold, "
                         f"{m['crossed_ratio']:.0%} of the {int(m['above_threshold'])} fp32 puts above it "
                         f"(at most {floor.crossed_ratio:.0%})")
    return found


@dataclass
class Verdict:
    """Whether a compressed package clears the floor, with the measurements that say so."""

    reference: Reference | None  # the original's outputs, for a report to reuse; None when nothing could be measured
    fidelity: list[OutputFidelity] = field(default_factory=list)
    below: list[str] = field(default_factory=list)
    unmeasured: str = ""  # why the floor could not be checked


def judge(original: ModelPackage, compressed: ModelPackage, eval_set: EvalSet, floor: Floor = FLOOR) -> Verdict:
    """Measure `compressed` against `original` on `eval_set` and hold it to `floor`. Only synthetic inputs may fail
    to run (a model with an input that wants a real value, say): the floor then goes unchecked, and says why."""
    try:
        reference = Reference(original, eval_set)
    except OptimizeError as exc:
        if not eval_set.synthetic:
            raise
        return Verdict(None, unmeasured=f"{exc.message}; pass --eval-data with real inputs")
    fidelity = reference.compare(compressed.onnx_model, "+".join(s.kind for s in compressed.manifest.compression))
    return Verdict(reference, fidelity, shortfalls(fidelity, floor))
