"""The load test's picture: latency against throughput, one point per concurrency, and its HTML report.

The curve is the one a capacity plan reads: throughput grows with concurrency until the server saturates,
after which only latency grows. p50 and p99 are drawn apart because a batching server keeps the median flat
while its tail climbs.
"""

from __future__ import annotations

from pathlib import Path

from inferd.bench.load.sweep import CSV_COLUMNS, LoadtestReport
from inferd.bench.plotting import figure, write


def write_plot(report: LoadtestReport, png: Path, page: Path | None = None) -> Path:
    """Draw `report` to `png` and its HTML page (`page`, else beside the PNG); returns the page."""
    levels = [level for level in report.levels if level.latency_ms["p50"] is not None]
    fig, (axes,) = figure(7, 4.5)
    for quantile, style in (("p50", "o-"), ("p99", "s--")):
        xs = [level.throughput_rps for level in levels]
        ys = [level.latency_ms[quantile] for level in levels]
        axes.plot(xs, ys, style, label=quantile)
        if quantile == "p50":
            for level, x, y in zip(levels, xs, ys, strict=True):
                note = f"c={level.concurrency}" + ("" if level.stable else " (unstable)")
                axes.annotate(note, (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8)
    axes.set_xlabel("throughput (requests/s)")
    axes.set_ylabel("latency (ms)")
    axes.set_title(f"{report.target['model']}: {report.workload}", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    axes.set_xlim(left=0)
    axes.set_ylim(bottom=0)
    plan, target = report.plan, report.target
    facts = (f"{target['protocol']} {target['address']}, model {target['model']}; {report.workload}; client "
             f"{report.client}; windows of {plan['window_s']} s until the last 3 agree within "
             f"{plan['stability']:.0%} (at most {plan['max_windows']}); {report.machine['cores']} cores")
    rows = [[str(row[column]) for column in CSV_COLUMNS] for row in report.rows()]
    return write(fig, png, f"inferd loadtest: {target['model']}", CSV_COLUMNS, rows, [facts], page)
