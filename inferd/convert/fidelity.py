"""Compare a converted model's outputs with its source's, so a silent conversion bug cannot ship.

ONNX Runtime in fp32 on the CPU is the reference runtime here: it computes what
the ONNX graph says without reduced-precision shortcuts, so a difference it shows
belongs to the conversion, not to a backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from inferd.manifest import Fidelity


def run_onnx_reference(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures surface as exceptions; the log would only repeat them
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, dict(feeds))]


def compare_outputs(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    *,
    reference_name: str,
    runtime_name: str,
    tolerance: float,
) -> Fidelity:
    """Max/mean absolute difference over all outputs; top-1 agreement on the first 2-D output."""
    if len(reference) != len(candidate):
        raise ValueError(f"source gave {len(reference)} outputs, converted model {len(candidate)}")
    max_diff = 0.0
    total_diff = 0.0
    count = 0
    for ref, got in zip(reference, candidate, strict=True):
        ref64 = np.asarray(ref, dtype=np.float64)
        got64 = np.asarray(got, dtype=np.float64).reshape(ref64.shape)
        diff = np.abs(ref64 - got64)
        max_diff = max(max_diff, float(diff.max(initial=0.0)))
        total_diff += float(diff.sum())
        count += diff.size
    agreement = None
    first = np.asarray(reference[0])
    if first.ndim == 2 and first.shape[1] > 1:
        agreement = float(np.mean(first.argmax(1) == np.asarray(candidate[0]).reshape(first.shape).argmax(1)))
    return Fidelity(
        reference=reference_name,
        runtime=runtime_name,
        samples=int(first.shape[0]) if first.ndim else 1,
        max_abs_diff=max_diff,
        mean_abs_diff=total_diff / max(count, 1),
        top1_agreement=agreement,
        tolerance=tolerance,
        passed=max_diff <= tolerance and (agreement is None or agreement == 1.0),
    )


def combine(parts: Sequence[Fidelity]) -> Fidelity:
    """One report over several sample sets (of different shapes, so they cannot be compared as one batch).

    Means are weighted by rows, the unit the sets share.
    """
    first = parts[0]
    samples = sum(part.samples for part in parts)
    agreements = [part.top1_agreement for part in parts if part.top1_agreement is not None]
    return first.model_copy(update={
        "samples": samples,
        "max_abs_diff": max(part.max_abs_diff for part in parts),
        "mean_abs_diff": sum(part.mean_abs_diff * part.samples for part in parts) / max(samples, 1),
        "top1_agreement": (sum(a * p.samples for a, p in zip(agreements, parts, strict=True)) / samples
                           if len(agreements) == len(parts) else None),
        "passed": all(part.passed for part in parts),
    })
