"""Fidelity, accuracy, size and latency of compressed packages against their uncompressed parent.

Fidelity is computed with onnxruntime in fp32 on the CPU (the reference
runtime), so a difference belongs to the compression, not to a backend's
reduced-precision shortcuts; latency is measured on the real backends.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from rich.table import Table

from inferd.optimize.evalset import EvalSet
from inferd.package import ModelPackage

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


def latency_ms(package: ModelPackage, backend: str, eval_set: EvalSet, runs: int = 30) -> float:
    """Median single-sample latency through `inferd.runtime.load`, the path serving takes."""
    from inferd.runtime import load

    with tempfile.TemporaryDirectory(prefix="inferd-eval-") as tmp:
        saved = package if package.path is not None else package.save(Path(tmp) / package.manifest.name)
        compiled = load(saved, backend=backend)
        feeds = {name: array[:1] for name, array in eval_set.inputs.items()}
        for _ in range(3):
            compiled.predict(feeds)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            compiled.predict(feeds)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def report(
    original: ModelPackage,
    compressed: Sequence[ModelPackage],
    eval_set: EvalSet,
    *,
    backends: Sequence[str] = (),
    timing_runs: int = 30,
) -> dict[str, Any]:
    """One JSON-able row per package: size, fidelity vs `original`, latency per backend (same run)."""
    reference = predict(original.onnx_model, eval_set)
    rows = []
    for package in [original, *compressed]:
        steps = [step.kind for step in package.manifest.compression] or ["none"]
        row: dict[str, Any] = {
            "compression": "+".join(steps),
            "precision": package.manifest.precision,
            "size_bytes": package.size_bytes() if package.path else package.onnx_model.ByteSize(),
            **fidelity(reference, predict(package.onnx_model, eval_set), eval_set.labels),
            "latency_ms": {b: round(latency_ms(package, b, eval_set, timing_runs), 3) for b in backends},
        }
        if package.manifest.compression:
            row["kept_layers"] = package.manifest.compression[-1].details.get("kept_layers", [])
        rows.append(row)
    base = rows[0]["size_bytes"]
    for row in rows:
        row["size_ratio"] = round(base / row["size_bytes"], 3)
    return {"model": original.manifest.name, "samples": len(eval_set), "rows": rows}


def render(result: dict[str, Any]) -> Table:
    table = Table(title=f"{result['model']}: compression vs uncompressed ({result['samples']} samples)")
    backends = sorted({b for row in result["rows"] for b in row["latency_ms"]})
    columns = ["compression", "precision", "size MB", "ratio", "top-1 agree", "top-5 overlap", "cosine", "SNR dB"]
    labelled = "accuracy" in result["rows"][0]
    columns += ["accuracy"] if labelled else []
    for column in [*columns, *(f"{b} ms" for b in backends)]:
        table.add_column(column)
    for row in result["rows"]:
        cells = [row["compression"], row["precision"], f"{row['size_bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}x",
                 f"{100 * row['top1_agreement']:.1f}%", f"{100 * row['top5_overlap']:.1f}%", f"{row['cosine']:.4f}",
                 f"{row['snr_db']:.1f}"]
        cells += [f"{100 * row['accuracy']:.1f}%"] if labelled else []
        cells += [f"{row['latency_ms'][b]:.2f}" if b in row["latency_ms"] else "-" for b in backends]
        table.add_row(*cells)
    return table
