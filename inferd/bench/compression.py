"""The compression report: size, latency per backend and fidelity of each compressed package, in one run.

It lives with the benchmarks rather than in `inferd.optimize` because latency is
only honest on the real backends, which come after compression in the data path.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.table import Table

from inferd.optimize import EvalSet, fidelity, predict
from inferd.package import ModelPackage
from inferd.runtime import load


def timed_calls(call: Callable[[], object], runs: int, warmup: int = 3) -> list[float]:
    """Milliseconds of `runs` calls of `call`, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def latencies_ms(
    packages: Sequence[ModelPackage], backends: Sequence[str], eval_set: EvalSet, runs: int = 30, rounds: int = 3
) -> list[dict[str, float]]:
    """Median single-sample latency of every package on every backend, through `inferd.runtime.load` as serving does.

    The runs are spread over `rounds` that visit every (package, backend) in turn,
    so a machine that drifts during the report slows all of them alike and the
    ratios between rows stay honest. Only one model is loaded at a time: idle
    models keep thread pools that spin and would slow the one being timed.
    """
    feeds = {name: array[:1] for name, array in eval_set.inputs.items()}
    times: dict[tuple[int, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="inferd-eval-") as tmp:
        saved = [p if p.path is not None else p.save(Path(tmp) / str(i)) for i, p in enumerate(packages)]
        for _ in range(rounds):
            for index, package in enumerate(saved):
                for backend in backends:
                    compiled = load(package, backend=backend)
                    times.setdefault((index, backend), []).extend(
                        timed_calls(partial(compiled.predict, feeds), max(1, runs // rounds)))
                    del compiled
    return [{backend: statistics.median(times[index, backend]) for backend in backends} for index in range(len(packages))]


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
    packages = [original, *compressed]
    latencies = latencies_ms(packages, backends, eval_set, timing_runs)
    rows = []
    for package, latency in zip(packages, latencies, strict=True):
        steps = [step.kind for step in package.manifest.compression] or ["none"]
        row: dict[str, Any] = {
            "compression": "+".join(steps),
            "precision": package.manifest.precision,
            "size_bytes": package.size_bytes() if package.path else package.onnx_model.ByteSize(),
            **fidelity(reference, predict(package.onnx_model, eval_set), eval_set.labels),
            "latency_ms": {backend: round(ms, 3) for backend, ms in latency.items()},
        }
        if package.manifest.compression:
            details = package.manifest.compression[-1].details
            row["kept_layers"] = details.get("kept_layers", [])
            if "kept_activations" in details:
                row["kept_activations"] = details["kept_activations"]
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


def report_json(result: Any) -> str:
    """A report as strict JSON: an SNR of identical outputs (infinite) is written as null, which every parser reads."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(result), indent=2, allow_nan=False) + "\n"
