"""One concurrency level measured in stable windows, as Triton's perf_analyzer measures.

The closed loop runs without pause while the clock is cut into fixed windows; a request belongs to the window
in which its answer arrived. After each window the last three are compared: when their throughputs and their
median latencies all lie within the stability bound of their means, the level is stable and is reported over
those three windows. A level still moving after the most windows allowed is reported over its last three
and marked unstable, never passed off as a measurement like the others.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from inferd.bench.load.records import Record, clock, closed_loop, cpu_seconds, latency_summary

STABLE_WINDOWS = 3


@dataclass(frozen=True)
class WindowPlan:
    window_s: float = 2.0
    stability: float = 0.10  # a fraction: 0.10 is perf_analyzer's default of 10%
    max_windows: int = 10


@dataclass
class Window:
    throughput_rps: float
    p50_ms: float | None
    requests: int
    client_cpu_s: float


@dataclass
class Level:
    """What a level reports: over its last three windows, with every window's own throughput and median."""

    concurrency: int
    stable: bool
    windows: int
    throughput_rps: float
    latency_ms: dict[str, Any]
    requests: int
    outcomes: dict[str, int]  # "200", other statuses, client errors: how many of each
    errors: int
    client_cpu_s: float
    client_cpu_ms_per_request: float | None
    client_cpu_share: float  # of all the machine's cores, over the level's measured windows
    window_throughputs_rps: list[float] = field(default_factory=list)
    window_p50_ms: list[float | None] = field(default_factory=list)
    error_sample: str | None = None  # the start of one refused request's answer, to say why

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def within(values: list[float | None], bound: float) -> bool:
    """Every value within `bound` (a fraction) of their mean; all equal (all zero or all missing) counts too."""
    if any(v is None for v in values):
        return all(v is None for v in values)
    numbers = [float(v) for v in values if v is not None]
    mean = sum(numbers) / len(numbers)
    if mean == 0:
        return all(v == 0 for v in numbers)
    return all(abs(v - mean) <= bound * mean for v in numbers)


def _window(records: list[Record], first: int, end: float, cpu_s: float, window_s: float) -> tuple[Window, int]:
    """The window ending at `end` from the records after index `first`, and the index where the next one starts.

    Records are appended as their answers arrive, so a window is a run of the list: reading only that run keeps
    the generator's own work per window proportional to the window, not to the level so far.
    """
    last = first
    while last < len(records) and records[last].start_s + records[last].latency_s < end:
        last += 1
    done = records[first:last]
    ok = [r.latency_s for r in done if r.ok]
    p50 = latency_summary(ok)["p50"]
    return Window(len(ok) / window_s, None if p50 is None else float(p50), len(done), cpu_s), last


async def measure_level(one: Callable[[int, float], Awaitable[Record]], concurrency: int,
                        plan: WindowPlan) -> Level:
    """Run `concurrency` closed-loop workers until the level is stable or out of windows.

    `one(index, t0)` sends request `index` and returns its record, timed from `t0`.
    """
    records: list[Record] = []
    done = False
    t0 = clock()

    async def send(index: int) -> bool:
        record = await one(index, t0)
        records.append(record)
        return record.ok

    loop_task = asyncio.get_running_loop().create_task(closed_loop(send, concurrency, lambda: done))
    windows: list[Window] = []
    cpu_marks = [cpu_seconds()]
    stable = False
    first = 0
    try:
        while len(windows) < plan.max_windows:
            end = (len(windows) + 1) * plan.window_s
            await asyncio.sleep(max(t0 + end - clock(), 0))
            if loop_task.done():
                loop_task.result()  # a worker that died takes the level with it, with its error
            cpu_marks.append(cpu_seconds())
            window, first = _window(records, first, end, cpu_marks[-1] - cpu_marks[-2], plan.window_s)
            windows.append(window)
            last = windows[-STABLE_WINDOWS:]
            if len(last) == STABLE_WINDOWS and within([w.throughput_rps for w in last], plan.stability) \
                    and within([w.p50_ms for w in last], plan.stability):
                stable = True
                break
    finally:
        done = True
        await loop_task
    return _level(records, windows, concurrency, stable, plan.window_s)


def _level(records: list[Record], windows: list[Window], concurrency: int, stable: bool, window_s: float) -> Level:
    kept = windows[-STABLE_WINDOWS:]
    start, end = (len(windows) - len(kept)) * window_s, len(windows) * window_s
    done = [r for r in records if start <= r.start_s + r.latency_s < end]
    ok = [r.latency_s for r in done if r.ok]
    outcomes: dict[str, int] = {}
    for r in done:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    cpu = sum(w.client_cpu_s for w in kept)
    errors = len(done) - len(ok)
    return Level(
        concurrency=concurrency, stable=stable, windows=len(windows),
        throughput_rps=round(len(ok) / (end - start), 3), latency_ms=latency_summary(ok), requests=len(done),
        outcomes=outcomes, errors=errors, client_cpu_s=round(cpu, 3),
        client_cpu_ms_per_request=round(cpu * 1000 / len(done), 4) if done else None,
        client_cpu_share=round(cpu / (end - start) / (os.cpu_count() or 1), 4),
        window_throughputs_rps=[round(w.throughput_rps, 3) for w in windows],
        window_p50_ms=[w.p50_ms for w in windows],
    )
