"""`inferd top`: a live view of one or more servers from their `/metrics`, or one sample as JSON for scripts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from inferd.cli import render
from inferd.errors import InferdError

if TYPE_CHECKING:
    from inferd.serve.monitor.watch import Monitor


def top(
    servers: Annotated[list[str] | None, typer.Argument(metavar="URL...",
        help="servers to watch, as http://HOST:PORT (or their --metrics-port address); default http://127.0.0.1:8000",
        show_default=False)] = None,
    interval: Annotated[float, typer.Option(help="seconds between refreshes (and between --once's two scrapes)")] = 1.0,
    api_key: Annotated[str | None, typer.Option(envvar="INFERD_API_KEY", help="the servers' API key")] = None,
    once: Annotated[bool, typer.Option(help="take one sample (two scrapes an interval apart), print it and exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="with --once: print the sample as JSON")] = False,
) -> None:
    """Watch servers live: per model req/s, p50/p99, queue, batch sizes, refusals; per server RSS and CPU."""
    from inferd.serve.monitor.watch import Monitor

    if not 0.1 <= interval <= 3600:
        raise InferdError(f"--interval {interval:g} is out of range; give seconds between 0.1 and 3600")
    if as_json and not once:
        raise InferdError("--json prints one sample; add --once (the live view is for a terminal)")
    monitor = Monitor(servers or ["http://127.0.0.1:8000"], api_key=api_key, timeout_s=max(1.0, min(interval, 5.0)))
    if once:
        code = asyncio.run(_once(monitor, interval, as_json))
        raise typer.Exit(code)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        asyncio.run(_live(monitor, interval))


async def _once(monitor: Monitor, interval: float, as_json: bool) -> int:
    """Exit status 0 when every server answered, 1 when some did not (they are in the output, as down); none
    answering is an error (2) with the reasons."""
    try:
        first = await monitor.poll()
        if not any(sample.up for sample in first):
            raise InferdError("no server answered: " + "; ".join(f"{s.url}: {s.error}" for s in first))
        await asyncio.sleep(interval)
        samples = await monitor.poll()
    finally:
        await monitor.aclose()
    if not any(sample.up for sample in samples):
        raise InferdError("no server answered: " + "; ".join(f"{s.url}: {s.error}" for s in samples))
    if as_json:
        taken = datetime.now(UTC).isoformat(timespec="seconds")
        print(json.dumps({"time": taken, "interval_s": interval, "servers": [s.as_json() for s in samples]}, indent=2))
    else:
        from inferd.cli.top_view import top_view

        render.out.print(top_view(samples, interval))
    return 0 if all(sample.up for sample in samples) else 1


async def _live(monitor: Monitor, interval: float) -> None:
    """Refresh on a fixed beat: a slow scrape shortens the next wait rather than drifting the clock."""
    from rich.live import Live

    from inferd.cli.top_view import top_view

    try:
        with Live(top_view(await monitor.poll(), interval), console=render.out, auto_refresh=False) as live:
            beat = time.monotonic()
            while True:
                beat += interval
                await asyncio.sleep(max(0.0, beat - time.monotonic()))
                live.update(top_view(await monitor.poll(), interval), refresh=True)
    finally:
        await monitor.aclose()
