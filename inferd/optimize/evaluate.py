"""Fidelity and accuracy of compressed models against their uncompressed parent.

Computed with onnxruntime in fp32 on the CPU (the reference runtime), so a
difference belongs to the compression, not to a backend's reduced-precision
shortcuts. Latency, which needs the real backends, is measured in
`inferd.bench.compression`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from inferd.optimize.evalset import EvalSet

_BATCH = 32


def predict(model: onnx.ModelProto, eval_set: EvalSet) -> np.ndarray:
    """First output on the whole set, in batches (one at a time when the batch dimension is fixed)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    dim = session.get_inputs()[0].shape[0]
    batch = _BATCH if not isinstance(dim, int) else dim
    outputs = []
    for start in range(0, len(eval_set), batch):
        feeds = {name: array[start : start + batch] for name, array in eval_set.inputs.items()}
        outputs.append(np.asarray(session.run(None, feeds)[0]))
    return np.concatenate(outputs).reshape(len(eval_set), -1)


def fidelity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 agreement, top-5 overlap, cosine similarity and SNR (dB) of logits; accuracies when labelled."""
    ref, got = reference.astype(np.float64), candidate.astype(np.float64)
    k = min(5, ref.shape[1])
    top_ref, top_got = np.argsort(-ref, axis=1)[:, :k], np.argsort(-got, axis=1)[:, :k]
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(top_ref, top_got, strict=True)])
    cosine = np.sum(ref * got, axis=1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    noise = float(np.sum((ref - got) ** 2))
    result = {
        "top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
        "top5_overlap": float(overlap),
        "cosine": float(np.mean(cosine)),
        "snr_db": float("inf") if noise == 0 else 10 * float(np.log10(float(np.sum(ref**2)) / noise)),
    }
    if labels is not None:
        result["accuracy_reference"] = float(np.mean(ref.argmax(1) == labels))
        result["accuracy"] = float(np.mean(got.argmax(1) == labels))
    return result


def score(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None) -> float:
    """Points (0-100) the accuracy guard budgets: accuracy when labelled, else agreement with the reference."""
    target = labels if labels is not None else reference.argmax(1)
    return 100 * float(np.mean(candidate.argmax(1) == target))
