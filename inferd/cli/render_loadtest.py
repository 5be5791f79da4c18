"""What `inferd loadtest` prints: a line per level as it finishes, then the table (kept apart from render.py,
which other commands' tables fill, so that each command's printing stays small)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table
from rich.text import Text

from inferd.cli.render import console, out

if TYPE_CHECKING:
    from inferd.bench.load.sweep import LoadtestReport
    from inferd.bench.load.windows import Level


def _ms(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def level_done(level: Level) -> None:
    state = "stable" if level.stable else "[yellow]UNSTABLE[/yellow]"
    console.print(f"concurrency {level.concurrency}: {level.throughput_rps:.1f} req/s, p50 "
                  f"{_ms(level.latency_ms['p50'])} ms, {level.windows} windows, {state}", soft_wrap=True)


def table(report: LoadtestReport) -> None:
    target = report.target
    grid = Table(title=f"{target['model']} at {target['address']} ({target['protocol']}): {report.workload}")
    for column in ("concurrency", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "errors", "windows", "stable",
                   "client CPU ms/req", "client CPU"):
        grid.add_column(column, justify="right")
    for level in report.levels:
        latency = level.latency_ms
        errors = ", ".join(f"{k}×{v}" for k, v in sorted(level.outcomes.items()) if k != "200") or "0"
        grid.add_row(str(level.concurrency), f"{level.throughput_rps:.1f}", *(_ms(latency[q]) for q in
                     ("p50", "p90", "p95", "p99")), errors if not level.errors else f"[red]{errors}[/red]",
                     str(level.windows), "yes" if level.stable else "[yellow]no[/yellow]",
                     _ms(level.client_cpu_ms_per_request), f"{level.client_cpu_share:.0%}")
    out.print(grid)
    cores = report.machine["cores"]
    busiest = max((level.client_cpu_share for level in report.levels), default=0.0)
    out.print(f"client CPU: share of all {cores} cores this load generator used; at {busiest:.0%} it is itself a "
              "real part of the machine's load" if busiest >= 0.25 else
              f"client CPU: share of all {cores} cores this load generator used", soft_wrap=True)
    for level in report.levels:
        if level.error_sample:
            console.print(Text.assemble((f"concurrency {level.concurrency}: {level.errors} requests failed", "red"),
                                       "; one answer was ", level.error_sample), soft_wrap=True)
