"""`inferd optimize --report --plot`: what each compression step costs in fidelity for what it gains in size and speed.

The left panel places each package by size (x) and fidelity to the uncompressed
model (y), the marker's area growing with its latency on the first backend timed
and its label giving that latency, so the trade-off reads at a glance: good
steps sit left and high with small markers. A package below the floor is drawn
in red. The right panel gives every backend's latency per step, since a step can
shrink a model and still slow one backend down (int8 on ONNX Runtime with
depthwise convolutions). Fidelity is the first output's most telling metric
the report holds: accuracy with labels, else top-1 agreement for a classifier,
cosine similarity for embeddings, the share of values crossing the threshold
for probability maps, else the SNR.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd.bench.plotting import figure, write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

# metric key → (axis label, higher is better)
_FIDELITY = {
    "accuracy": ("accuracy on labels", True),
    "top1_agreement": ("top-1 agreement with the uncompressed model", True),
    "cosine": ("cosine similarity to the uncompressed model", True),
    "crossed_ratio": ("share of values crossing the threshold", False),
    "snr_db": ("SNR vs the uncompressed model, dB", True),
}


def _fidelity(rows: list[dict[str, Any]]) -> tuple[str, list[float | None]]:
    """The metric every row's first output has, and its values (None where infinite: identical outputs)."""
    metrics = [row["outputs"][0]["metrics"] for row in rows]
    key = next((k for k in _FIDELITY if all(k in m for m in metrics)), "")
    values = [m.get(key) for m in metrics]
    return key, [v if v is not None and math.isfinite(v) else None for v in values]


def _tradeoff(ax: Axes, rows: list[dict[str, Any]], backend: str | None) -> None:
    key, values = _fidelity(rows)
    finite = [v for v in values if v is not None] or [0.0]
    exact = max(finite) + 5 if key == "snr_db" else max(finite)
    ys = [exact if v is None else v for v in values]
    xs = [row["size_bytes"] / 1e6 for row in rows]
    latency = [row["latency_ms"].get(backend, 0.0) if backend else 0.0 for row in rows]
    largest = max(latency) or 1.0
    sizes = [60 + 600 * ms / largest for ms in latency]
    colours = ["#2ca02c" if row["usable"] else "#d62728" for row in rows]
    ax.scatter(xs, ys, s=sizes, c=colours, alpha=0.6, edgecolors="black")
    for x, y, row, ms, value in zip(xs, ys, rows, latency, values, strict=True):
        shown = "-" if not key else "exact" if value is None else f"{value:.3g}"
        timing = f", {ms:.2f} ms" if backend else ""
        ax.annotate(f"{row['compression']}\n{shown}{timing}", (x, y), textcoords="offset points", xytext=(8, 6),
                    fontsize=8)
    ax.set_xlabel("size on disk, MB")
    ax.set_ylabel(_FIDELITY[key][0] + ("" if _FIDELITY[key][1] else " (lower is better)") if key else "fidelity")
    ax.set_xlim(left=0, right=max(xs) * 1.3)
    ax.margins(y=0.2)  # room for the labels above the highest and below the lowest marker
    timed = f"; marker area: latency on {backend}" if backend else ""
    ax.set_title(f"size vs fidelity ({rows[0]['outputs'][0]['name']}){timed}", fontsize=10)
    ax.grid(alpha=0.3)


def _latencies(ax: Axes, rows: list[dict[str, Any]], backends: list[str]) -> None:
    width = 0.8 / max(1, len(backends))
    for index, backend in enumerate(backends):
        positions = [row_index + index * width for row_index in range(len(rows))]
        ax.bar(positions, [row["latency_ms"].get(backend, 0.0) for row in rows], width, label=backend)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], [row["compression"] for row in rows], fontsize=8)
    ax.set_ylabel("median latency, ms (one sample)")
    ax.set_title("latency per step and backend", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def write_plot(result: dict[str, Any], png: Path) -> Path:
    """Draw a compression report (`inferd.bench.compression.report`) to `png` and an HTML page beside it."""
    rows = result["rows"]
    backends = sorted({b for row in rows for b in row["latency_ms"]})
    fig, axes = figure(13 if backends else 7, 5, 2 if backends else 1)
    _tradeoff(axes[0], rows, backends[0] if backends else None)
    if backends:
        _latencies(axes[1], rows, backends)
    fig.suptitle(f"{result['model']}: compression steps ({result['samples']} samples)")
    key, values = _fidelity(rows)
    headers = ["compression", "precision", "size MB", "ratio", key or "fidelity",
               *(f"{b} ms" for b in backends), "usable"]
    table = [[row["compression"], row["precision"], f"{row['size_bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}x",
              "-" if not key else "exact" if value is None else f"{value:.4g}",
              *(f"{row['latency_ms'].get(b, 0.0):.2f}" for b in backends),
              "yes" if row["usable"] else "no: " + "; ".join(row["below_floor"])]
             for row, value in zip(rows, values, strict=True)]
    notes = [f"evaluated on {result.get('evaluation_set', '')}", f"floor: {result.get('floor', '')}"]
    return write(fig, png, f"inferd optimize report: {result['model']}", headers, table, notes)
