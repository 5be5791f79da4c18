"""The compression report: size, latency per backend and per-output fidelity of each compressed package, in one run.

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

from inferd.optimize import EvalSet, Reference
from inferd.optimize.floor import FLOOR, Floor, shortfalls
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
    feeds = eval_set.batch(0, 1)
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
    evaluation: EvalSet | Reference,
    *,
    backends: Sequence[str] = (),
    timing_runs: int = 30,
    floor: Floor = FLOOR,
) -> dict[str, Any]:
    """One JSON-able row per package: size, per-output fidelity vs `original` and whether it clears `floor`,
    latency per backend (same run). `evaluation` is the evaluation set, or `original`'s outputs on one."""
    reference = evaluation if isinstance(evaluation, Reference) else Reference(original, evaluation)
    packages = [original, *compressed]
    latencies = latencies_ms(packages, backends, reference.eval_set, timing_runs)
    rows = []
    for package, latency in zip(packages, latencies, strict=True):
        steps = [step.kind for step in package.manifest.compression] or ["none"]
        outputs = reference.compare(package.onnx_model, "+".join(steps))
        below = shortfalls(outputs, floor)
        row: dict[str, Any] = {
            "compression": "+".join(steps),
            "precision": package.manifest.precision,
            "size_bytes": package.size_bytes() if package.path else package.onnx_model.ByteSize(),
            "outputs": [output.as_dict() for output in outputs],
            "usable": not below,
            "below_floor": below,
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
    return {"model": original.manifest.name, "samples": len(reference.eval_set),
            "evaluation_set": reference.eval_set.description, "floor": floor.describe(), "rows": rows}


# (column, metric, format): a cell is "-" where an output's role does not call for the metric
_METRIC_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("rel. error", "relative_error", lambda v: f"{v:.3g}"),
    ("SNR dB", "snr_db", lambda v: f"{v:.1f}"),
    ("cosine", "cosine", lambda v: f"{v:.4f}"),
    ("top-1 agree", "top1_agreement", lambda v: f"{100 * v:.1f}%"),
    ("top-5 overlap", "top5_overlap", lambda v: f"{100 * v:.1f}%"),
    ("accuracy", "accuracy", lambda v: f"{100 * v:.1f}%"),
    ("scores SNR dB", "scores_snr_db", lambda v: f"{v:.1f}"),
    ("crossed", "crossed_ratio", lambda v: f"{100 * v:.1f}%"),
)


def render(result: dict[str, Any]) -> Table:
    """One line per package and output; the caption says which metrics judge each output and why."""
    rows = result["rows"]
    outputs = [output for row in rows for output in row["outputs"]]
    used = [(title, key, fmt) for title, key, fmt in _METRIC_COLUMNS
            if any(key in output["metrics"] for output in outputs)]
    peaks = any("peak" in output["metrics"] for output in outputs)
    backends = sorted({b for row in rows for b in row["latency_ms"]})
    threshold = next((o["metrics"]["threshold"] for o in outputs if "threshold" in o["metrics"]), None)
    table = Table(title=f"{result['model']}: compression vs uncompressed ({result['samples']} samples: "
                        f"{result.get('evaluation_set', '')})")
    titles = ["compression", "precision", "size MB", "ratio", "output"]
    titles += [f"crossed {threshold:g}" if key == "crossed_ratio" else title for title, key, _ in used]
    titles += ["peak score (fp32)"] if peaks else []
    titles += [*(f"{b} ms" for b in backends), "usable"]
    for title in titles:
        table.add_column(title)
    for row in rows:
        for index, output in enumerate(row["outputs"]):
            m = output["metrics"]
            first = index == 0
            cells = [row["compression"], row["precision"], f"{row['size_bytes'] / 1e6:.2f}",
                     f"{row['size_ratio']:.2f}x"] if first else ["", "", "", ""]
            cells.append(output["name"])
            cells += [_cell(m.get(key), fmt) for _, key, fmt in used]
            if peaks:
                cells.append(f"{m['peak']:.3f} ({m['peak_reference']:.3f})" if "peak" in m else "-")
            cells += [f"{row['latency_ms'][b]:.2f}" if first and b in row["latency_ms"] else "" for b in backends]
            cells.append(("yes" if row["usable"] else "[red]NO[/red]") if first else "")
            table.add_row(*cells)
    notes = [f"{o['name']}: {o['why']}" for o in rows[0]["outputs"]]
    notes += [f"{row['compression']} is below the floor: {'; '.join(row['below_floor'])}"
              for row in rows if row["below_floor"]]
    table.caption = "\n".join([*notes, f"floor: {result.get('floor', FLOOR.describe())}"])
    return table


def _cell(value: float | None, fmt: Callable[[float], str]) -> str:
    if value is None:
        return "-"
    return "exact" if math.isinf(value) and value > 0 else fmt(value)


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
