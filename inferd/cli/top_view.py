"""What `inferd top` draws: one block per server, a header line with its process and a table of its models."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from inferd.cli.render import human_bytes
from inferd.serve.monitor.sample import ModelSample, ServerSample

_COLUMNS = ("model", "req/s", "p50 ms", "p99 ms", "wait+compute ms", "queue", "in flight", "batch", "batch sizes", "refused/s",
            "errors/s")


def top_view(samples: Sequence[ServerSample], interval_s: float) -> RenderableType:
    """The whole screen for one refresh; a server that is down keeps its place, with the reason."""
    heading = Text(f"inferd top  {time.strftime('%H:%M:%S')}  every {interval_s:g}s  "
                   f"{sum(s.up for s in samples)}/{len(samples)} up  (Ctrl-C quits)", style="bold")
    return Group(heading, *(_server(sample) for sample in samples))


def _server(sample: ServerSample) -> RenderableType:
    if not sample.up:
        return Group(Text(""), Text("● ", style="red") + Text(f"{sample.url}  down: {sample.error}", style="red"))
    facts = [f"RSS {_bytes(sample.rss_bytes)}", f"CPU {_number(sample.cpu_percent, '.0f')}%",
             f"{len(sample.models)} models"]
    header = Text("● ", style="green") + Text(sample.url, style="bold") + Text("  up  " + "  ".join(facts))
    table = Table(box=None, pad_edge=False, header_style="dim")
    for column in _COLUMNS:
        table.add_column(column, justify="left" if column in ("model", "batch sizes") else "right")
    for model in sample.models:
        table.add_row(*_row(model))
    return Group(Text(""), header, table)


def _row(model: ModelSample) -> tuple[str, ...]:
    refused = _number(model.refusals_per_s, ".1f")
    return (
        model.model, _number(model.requests_per_s, ".1f"),
        _number(model.p50_s and model.p50_s * 1000, ".1f"), _number(model.p99_s and model.p99_s * 1000, ".1f"),
        _split(model.queue_time_s, model.compute_time_s),
        f"{model.queue_depth:g}", f"{model.in_flight:g}", _number(model.batch_size_mean, ".1f"),
        _distribution(model.batch_sizes),
        f"[yellow]{refused}[/yellow]" if model.refusals_per_s else refused,
        f"[red]{_number(model.errors_per_s, '.1f')}[/red]" if model.errors_per_s else _number(model.errors_per_s, ".1f"),
    )


def _split(queue_s: float | None, compute_s: float | None) -> str:
    """A request's mean time waiting for its batch and in its batch's compute: which of the two to tune."""
    if queue_s is None or compute_s is None:
        return "-"
    return f"{queue_s * 1000:.1f}+{compute_s * 1000:.1f}"


def _distribution(sizes: dict[str, float]) -> str:
    """The three most common batch-size ranges as shares of the interval's batches."""
    total = sum(sizes.values())
    common = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    return " ".join(f"{label}:{count / total:.0%}" for label, count in common) if total else "-"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _bytes(value: float | None) -> str:
    return "-" if value is None else human_bytes(value)
