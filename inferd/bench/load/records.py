"""One request as a load generator saw it, the closed loop that sends them, and the statistics over them.

`inferd loadtest` and the server benchmarks time requests with this one clock and this one loop, so that
their numbers can be compared: a request's latency runs from just before its body is handed to the client
to just after the whole answer is read and checked.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

# Not loop.time(): uvloop's clock ticks in whole milliseconds.
clock = time.perf_counter


class Record(NamedTuple):
    """One request; written to results as a list in this order (`RECORD_COLUMNS`)."""

    start_s: float  # when it was sent, from the start of the measured window (negative in the warm-up)
    latency_s: float
    status: int  # the HTTP status, 0 when none came
    retry_after: str | None  # the Retry-After header of a refusal
    version: str | None  # the model version that answered (when asked for)
    client_error: str | None  # what went wrong on the client's side: a timeout, a broken connection, a bad body

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.client_error is None

    @property
    def outcome(self) -> str:
        """"200", another status, or the client's error: the key errors are counted by."""
        return self.client_error or str(self.status)


RECORD_COLUMNS = list(Record._fields)


class Answer(NamedTuple):
    status: int
    headers: Mapping[str, str]
    body: bytes
    error: str | None


async def exchange(post: Callable[[], Awaitable[tuple[int, Any, bytes]]],
                   check: Callable[[Mapping[str, str], bytes], str | None] | None = None) -> Answer:
    """Send one request; a 200 whose body `check` finds wrong is a client error, as is a timeout or a reset."""
    status, body, error = 0, b"", None
    headers: Mapping[str, str] = {}
    try:
        status, headers, body = await post()
        if status == 200 and check is not None:
            error = check(headers, body)
    except TimeoutError:
        error = "client_timeout"
    except Exception as exc:
        error = type(exc).__name__
    return Answer(status, headers, body, error)


async def closed_loop(one: Callable[[int], Awaitable[bool]], concurrency: int, until: Callable[[], bool],
                      backoff_s: float = 0.0) -> None:
    """`concurrency` workers, each sending its next request (`one(index)`) when its last one is answered.

    A refused request is answered at once: with `backoff_s`, a worker waits that long after one rather than
    spin on it.
    """

    async def worker(first: int) -> None:
        index = first
        while not until():
            if not await one(index) and backoff_s:
                await asyncio.sleep(backoff_s)
            index += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


def cpu_seconds() -> float:
    """This process's user + system CPU time: what the load generator itself costs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), on an already sorted list."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def tally(records: list[Record], key: Callable[[Record], Any]) -> dict[str, int]:
    """How many records fall under each key (as a string), for the per-status counts in the results."""
    return dict(Counter(str(key(r)) for r in records))


def latency_summary(seconds: list[float]) -> dict[str, float | int | None]:
    """Milliseconds: count, mean, p50/p90/p95/p99, min and max."""
    values = sorted(s * 1000 for s in seconds)
    summary: dict[str, float | int | None] = {"count": len(values)}
    summary["mean"] = round(sum(values) / len(values), 3) if values else None
    for q in (50, 90, 95, 99):
        value = percentile(values, q)
        summary[f"p{q}"] = None if value is None else round(value, 3)
    summary["min"] = round(values[0], 3) if values else None
    summary["max"] = round(values[-1], 3) if values else None
    return summary
