"""Per-output fidelity: which metrics fit which output, and their running tallies over an evaluation set.

One number for a whole model hides what matters: a detector's box coordinates
(hundreds of pixels) dominate the cosine and SNR of its output while its
confidence scores (at most 1) collapse unseen, and top-1 over a flattened
detection tensor means nothing. So every output is judged on its own, by what
it holds, as the uncompressed model's values show:

- every output: relative error, SNR (dB) and cosine similarity to fp32, each over
  the whole output on the whole set (a per-sample cosine would let the noise of
  a near-empty probability map, one with no text in it, drag the mean down);
- the classifier's output (`manifest.classifier`): top-1 agreement, top-5
  overlap, and accuracy when the evaluation set is labelled;
- values in [0, 1] (probability maps, sigmoid or softmax scores), in the whole
  output or in some channels along axis 1 (a YOLO head's class scores beside
  its boxes): how many values cross the threshold, relative to how many fp32
  puts above it, and the mean of each sample's highest score.

Tallies add batch by batch, so no more than one batch of outputs is held. Where `inferd.tolerance` judges a few
samples pass or fail (may a reduced precision stand?), these describe a whole evaluation set for a report; the
threshold and the SNR are the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from inferd.tolerance import THRESHOLD, snr_db

Kind = Literal["classifier", "probabilities", "scores", "values", "skipped"]


@dataclass(frozen=True)
class Role:
    """What an output holds, and so which metrics judge it and why."""

    name: str
    kind: Kind
    why: str
    channels: tuple[int, ...] = ()  # kind "scores": the channels along axis 1 whose values lie in [0, 1]
    unit: bool = False  # every value lies in [0, 1]: threshold crossings are counted over the whole output

    @property
    def classifier(self) -> bool:
        return self.kind == "classifier"


@dataclass
class OutputFidelity:
    """One output of a candidate measured against the same output of the reference."""

    name: str
    kind: Kind
    why: str
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "why": self.why, "metrics": dict(self.metrics)}


class Ranges:
    """The smallest and largest value of each channel (axis 1 for outputs of rank 3 and up) over the reference's
    outputs, which decide each output's role."""

    def __init__(self) -> None:
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.numeric = True

    def add(self, values: np.ndarray) -> None:
        if values.dtype.kind not in "fiub":
            self.numeric = False
        if not self.numeric or values.size == 0:
            return
        axes = tuple(axis for axis in range(values.ndim) if axis != 1) if values.ndim >= 3 else None
        low = np.atleast_1d(np.min(values, axis=axes)).astype(np.float64)
        high = np.atleast_1d(np.max(values, axis=axes)).astype(np.float64)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)


def role(name: str, ranges: Ranges, classifier_output: str | None) -> Role:
    if not ranges.numeric:
        return Role(name, "skipped", "not numeric (strings, say): no numeric metric applies")
    if ranges.low is None or ranges.high is None:
        return Role(name, "skipped", "empty on every sample: nothing to compare")
    within = (ranges.low >= 0) & (ranges.high <= 1)
    if name == classifier_output:
        why = "the classifier output (manifest): top-1 and top-5 judge its answers"
        unit = bool(within.all())
        return Role(name, "classifier", why + ("; its values lie in [0, 1], so threshold crossings too" if unit else ""),
                    unit=unit)
    if within.all():
        return Role(name, "probabilities", "every value fp32 gives lies in [0, 1] (a probability map or scores): "
                                           "threshold crossings judge its decisions", unit=True)
    if within.any() and len(within) > 1:
        channels = tuple(int(c) for c in np.flatnonzero(within))
        return Role(name, "scores", f"channels {_spans(channels)} of axis 1 lie in [0, 1] (scores) and the others do "
                                    "not (boxes, say): threshold crossings and SNR of the score channels judge them",
                    channels)
    return Role(name, "values", "unbounded values (logits, coordinates, embeddings): error, SNR and cosine only")


def _spans(channels: tuple[int, ...]) -> str:
    """(4, 5, 6, 9) -> '4-6, 9'."""
    spans: list[list[int]] = []
    for channel in channels:
        if spans and channel == spans[-1][1] + 1:
            spans[-1][1] = channel
        else:
            spans.append([channel, channel])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


class Tally:
    """Running sums for one output's metrics, fed batch by batch."""

    def __init__(self, role: Role, threshold: float = THRESHOLD) -> None:
        self.role, self.threshold = role, threshold
        self.sums: dict[str, float] = {}

    def _add(self, key: str, value: float | np.number) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)

    def add(self, reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> None:
        if self.role.kind == "skipped":
            return
        rows = max(1, reference.shape[0]) if reference.ndim else 1
        ref = reference.astype(np.float64).reshape(rows, -1)
        got = candidate.astype(np.float64).reshape(rows, -1)
        self._add("rows", rows)
        self._add("signal", np.sum(ref**2))
        self._add("noise", np.sum((ref - got) ** 2))
        self._add("candidate_signal", np.sum(got**2))
        self._add("dot", np.sum(ref * got))
        if self.role.classifier:
            self._classify(ref, got, labels)
        if self.role.unit:
            self._scores(ref, got)
        elif self.role.kind == "scores":
            channels = list(self.role.channels)
            part_ref = np.take(reference, channels, axis=1).astype(np.float64).reshape(rows, -1)
            part_got = np.take(candidate, channels, axis=1).astype(np.float64).reshape(rows, -1)
            self._add("scores_signal", np.sum(part_ref**2))
            self._add("scores_noise", np.sum((part_ref - part_got) ** 2))
            self._scores(part_ref, part_got)

    def _classify(self, ref: np.ndarray, got: np.ndarray, labels: np.ndarray | None) -> None:
        k = min(5, ref.shape[1])
        top_ref = np.argpartition(-ref, k - 1, axis=1)[:, :k]
        top_got = np.argpartition(-got, k - 1, axis=1)[:, :k]
        self._add("top1", np.count_nonzero(ref.argmax(1) == got.argmax(1)))
        self._add("top5", sum(len(set(a) & set(b)) / k for a, b in zip(top_ref, top_got, strict=True)))
        if labels is not None:
            self._add("labelled_reference", np.count_nonzero(ref.argmax(1) == labels))
            self._add("labelled", np.count_nonzero(got.argmax(1) == labels))

    def _scores(self, ref: np.ndarray, got: np.ndarray) -> None:
        above = ref > self.threshold
        self._add("above", np.count_nonzero(above))
        self._add("crossed", np.count_nonzero(above != (got > self.threshold)))
        self._add("peak_reference", np.sum(ref.max(axis=1)))
        self._add("peak", np.sum(got.max(axis=1)))

    def result(self, labelled: bool = False) -> OutputFidelity:
        s, rows = self.sums, self.sums.get("rows", 0.0)
        output = OutputFidelity(self.role.name, self.role.kind, self.role.why)
        if self.role.kind == "skipped" or not rows:
            return output
        m = output.metrics
        m["relative_error"] = _ratio(s["noise"], s["signal"]) ** 0.5
        m["snr_db"] = snr_db(s["signal"], s["noise"])
        norms = (s["signal"] * s["candidate_signal"]) ** 0.5
        m["cosine"] = s["dot"] / norms if norms else float(s["signal"] == s["candidate_signal"])
        if self.role.classifier:
            m["top1_agreement"], m["top5_overlap"] = s["top1"] / rows, s["top5"] / rows
            if labelled:
                m["accuracy_reference"], m["accuracy"] = s["labelled_reference"] / rows, s["labelled"] / rows
        if self.role.kind == "scores":
            m["scores_snr_db"] = snr_db(s["scores_signal"], s["scores_noise"])
        if "above" in s:
            m["threshold"] = self.threshold
            m["above_threshold"], m["crossed"] = s["above"], s["crossed"]
            m["crossed_ratio"] = _ratio(s["crossed"], max(s["above"], 1.0))
            m["peak_reference"], m["peak"] = s["peak_reference"] / rows, s["peak"] / rows
        return output


def _ratio(a: float, b: float) -> float:
    if a == 0:
        return 0.0
    return float("inf") if b == 0 else a / b


def judged(fidelity: list[OutputFidelity]) -> OutputFidelity | None:
    """The output a single score is read from: the classifier's, else the worst-kept probability output."""
    for output in fidelity:
        if output.kind == "classifier":
            return output
    scored = [output for output in fidelity if "crossed_ratio" in output.metrics]
    return max(scored, key=lambda output: output.metrics["crossed_ratio"], default=None)


def fidelity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Classifier metrics of two arrays of logits ([samples, classes]), for callers that hold both whole."""
    tally = Tally(Role("logits", "classifier", "logits"))
    tally.add(reference, candidate, labels)
    return tally.result(labelled=labels is not None).metrics
