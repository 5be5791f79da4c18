"""Per-model inference statistics in the shape of Triton's statistics extension.

Tools that scrape `/v2/models/stats` (perf_analyzer, dashboards) expect these
exact field names: counts plus cumulative nanoseconds per phase, and a
per-batch-size breakdown. The same numbers feed Triton's Prometheus metric names
(`inferd.serve.metrics.triton`).

As Triton does, a request that succeeds records its duration, its queue time and
its three compute phases (`inferd.serve.phases`) in one step, so the queue and
compute counts equal the success count at every read: perf_analyzer takes the
difference of two reads and aborts when the compute counts differ. A batch size's
entry counts executions, each with the batch's own phases.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from inferd.serve.phases import Phases


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _Compute:
    """Triton's three compute phases, each a count and a duration, always added together."""

    input: _Duration = field(default_factory=_Duration)
    infer: _Duration = field(default_factory=_Duration)
    output: _Duration = field(default_factory=_Duration)

    def add(self, phases: Phases) -> None:
        self.input.add(phases.input_s)
        self.infer.add(phases.infer_s)
        self.output.add(phases.output_s)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"compute_input": self.input.as_dict(), "compute_infer": self.infer.as_dict(),
                "compute_output": self.output.as_dict()}


@dataclass
class ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute: _Compute = field(default_factory=_Compute)
    batches: dict[int, _Compute] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def request(self) -> _Request:
        """One request's handling, from decoding its body to encoding its answer: it succeeds when the block ends,
        with the phases the block filled in; any exception fails it, a cancelled request included."""
        return _Request(self)

    def on_success(self, seconds: float, phases: Phases) -> None:
        with self._lock:
            self.success.add(seconds)
            self.queue.add(phases.queue_s)
            self.compute.add(phases)
            self.last_inference_ms = int(time.time() * 1000)

    def on_failure(self, seconds: float) -> None:
        with self._lock:
            self.fail.add(seconds)
            self.last_inference_ms = int(time.time() * 1000)

    def on_batch(self, rows: int, requests: int, phases: Phases) -> None:
        """One batch run; each of its requests records its own share, and its queue time, when it succeeds."""
        with self._lock:
            self.inference_count += rows
            self.execution_count += 1
            self.batches.setdefault(rows, _Compute()).add(phases)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        with self._lock:
            zero = _Duration().as_dict()
            return {
                "name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(), "fail": self.fail.as_dict(), "queue": self.queue.as_dict(),
                    **self.compute.as_dict(), "cache_hit": zero, "cache_miss": zero,
                },
                "batch_stats": [{"batch_size": size, **phases.as_dict()} for size, phases in sorted(self.batches.items())],
            }


class _Request:
    """`ModelStats.request` as a plain context manager: one per request, on the event loop, where a generator-based
    one costs several times its two clock reads."""

    __slots__ = ("_phases", "_started", "_stats")

    def __init__(self, stats: ModelStats) -> None:
        self._stats, self._phases, self._started = stats, Phases(), 0.0

    def __enter__(self) -> Phases:
        self._started = time.perf_counter()
        return self._phases

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        seconds = time.perf_counter() - self._started
        if kind is None:
            self._stats.on_success(seconds, self._phases)
        else:
            self._stats.on_failure(seconds)
