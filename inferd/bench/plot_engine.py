"""`inferd bench --plot`: how each backend × precision's latency spreads, and how close each comes to the roof.

The left panel draws every timed call (inferd's `predict`, as users get it) as a
box per configuration, fastest first, PyTorch eager last as the baseline; a
logarithmic axis where eager is an order of magnitude slower keeps the fast
boxes readable. The right panel is the roofline as bars: the peak of
each configuration's precision on this machine, and the throughput the bare
backend call achieved, labelled with the fraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.ticker import NullFormatter, ScalarFormatter

from inferd.bench.engine import ConfigResult, EngineReport
from inferd.bench.plotting import figure, write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_DEFAULT, _OTHER, _BASELINE, _PEAK = "#1f77b4", "#7fa7c9", "#d62728", "#dddddd"


def _label(name: str) -> str:
    """A configuration's name on lines short enough to sit side by side under the boxes."""
    return name.replace(":", "\n").replace(" ", "\n")


def _latencies(ax: Axes, report: EngineReport, configs: list[ConfigResult]) -> None:
    labels = [_label(c.name) + ("\n(default)" if c.is_default else "") for c in configs]
    data = [report.timings_ms[c.name] for c in configs]
    colours = [_DEFAULT if c.is_default else _OTHER for c in configs]
    if report.baseline_name in report.timings_ms:
        labels.append(_label(report.baseline_name) + "\n(baseline)")
        data.append(report.timings_ms[report.baseline_name])
        colours.append(_BASELINE)
    boxes = ax.boxplot(data, patch_artist=True, widths=0.6, flierprops={"markersize": 2, "alpha": 0.5})
    for patch, colour in zip(boxes["boxes"], colours, strict=True):
        patch.set_facecolor(colour)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    if max(max(d) for d in data) > 10 * min(min(d) for d in data):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())  # 20, not 2 x 10^1
        ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_ylabel("latency per call, ms (every timed call)")
    ax.set_title(f"latency, batch {report.batch}: inferd predict per backend x precision")
    ax.grid(axis="y", alpha=0.3)


def _roofline(ax: Axes, configs: list[ConfigResult]) -> None:
    placed = [c for c in configs if c.roofline]
    rows = range(len(placed))
    peaks = [c.roofline["peak_gops"] or 0.0 for c in placed if c.roofline]
    achieved = [c.roofline["achieved_gops"] for c in placed if c.roofline]
    ax.barh(rows, peaks, color=_PEAK, label="peak of its precision (measured)", height=0.7)
    ax.barh(rows, achieved, color=[_DEFAULT if c.is_default else _OTHER for c in placed], height=0.4,
            label="achieved (bare backend call)")
    for row, c in zip(rows, placed, strict=True):
        r = c.roofline or {}
        label = f"{100 * r['fraction']:.1f}%" if r.get("fraction") is not None else "no peak"
        ax.text(r["achieved_gops"] * 1.05, row, label, va="center", fontsize=8)
    ax.set_yticks(list(rows), [c.name.replace(" ", "\n") for c in placed], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=min(achieved) / 3, right=max(peaks + achieved) * 2)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("GOP/s (2 x MACs per second)")
    ax.set_title("achieved vs peak")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=7, frameon=False)
    ax.grid(axis="x", alpha=0.3)


def write_plot(report: EngineReport, png: Path) -> Path:
    """Draw `report` to `png` and an HTML page beside it; returns the page."""
    configs = sorted(report.configs, key=lambda c: c.inferd.median_ms)
    roof = any(c.roofline for c in configs)
    fig, axes = figure(14 if roof else 8, 5, 2 if roof else 1)
    _latencies(axes[0], report, configs)
    if roof:
        _roofline(axes[1], configs)
    fig.suptitle(f"{Path(report.package).name} on {report.machine['cpu']} ({report.machine['cores']} cores)")
    headers = ["configuration", "inferd median ms", "p95 ms", "p99 ms", "raw median ms", "GOP/s", "of peak"]
    rows = [[c.name + (" (default)" if c.is_default else ""), f"{c.inferd.median_ms:.2f}", f"{c.inferd.p95_ms:.2f}",
             f"{c.inferd.p99_ms:.2f}", f"{c.raw.median_ms:.2f}",
             f"{c.roofline['achieved_gops']:.1f}" if c.roofline else "",
             f"{100 * c.roofline['fraction']:.1f}%" if c.roofline and c.roofline["fraction"] is not None else ""]
            for c in configs]
    if report.baseline:
        b = report.baseline
        rows.append([report.baseline_name or "baseline", f"{b.median_ms:.2f}", f"{b.p95_ms:.2f}",
                     f"{b.p99_ms:.2f}", "", "", ""])
    notes = []
    if report.operations and report.peaks:
        notes.append(f"{report.operations['macs_per_sample'] / 1e9:.3f} GMACs per sample; instruction sets found: "
                     f"{' '.join(report.peaks['features'])}")
        notes += [f"{name} peak: " + (f"{p['all_threads_gops']:.0f} GOP/s ({p['kernel']})" if p["absent"] is None
                                      else f"absent: {p['absent']}") for name, p in report.peaks["peaks"].items()]
    return write(fig, png, f"inferd bench {report.package}", headers, rows, notes)
