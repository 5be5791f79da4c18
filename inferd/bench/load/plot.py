"""The load test's pictures: latency against throughput, one point per concurrency, and an HTML report.

The curve is the one a capacity plan reads: throughput grows with concurrency until the server saturates,
after which only latency grows. p50 and p99 are drawn apart because a batching server keeps the median flat
while its tail climbs. matplotlib runs on Agg: no display is needed, and none is touched.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from inferd.bench.load.sweep import CSV_COLUMNS, LoadtestReport


def write_plot(report: LoadtestReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [level for level in report.levels if level.latency_ms["p50"] is not None]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    plt.close(figure)


def write_html(report: LoadtestReport, png: Path, path: Path) -> None:
    """One self-contained file: the plot embedded as data, the table, and what was measured how."""
    image = base64.b64encode(png.read_bytes()).decode()
    header = "".join(f"<th>{html.escape(c)}</th>" for c in CSV_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(row[c]))}</td>" for c in CSV_COLUMNS) + "</tr>"
                   for row in report.rows())
    plan, target = report.plan, report.target
    facts = (f"{target['protocol']} {target['address']}, model {target['model']}; {report.workload}; client "
             f"{report.client}; windows of {plan['window_s']} s until the last 3 agree within "
             f"{plan['stability']:.0%} (at most {plan['max_windows']}); {report.machine['cores']} cores")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>inferd loadtest: {html.escape(target['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head>
<body><h1>inferd loadtest: {html.escape(target['model'])}</h1>
<p>{html.escape(facts)}</p>
<img alt="latency against throughput" src="data:image/png;base64,{image}">
<table><tr>{header}</tr>{rows}</table>
</body></html>
""")
