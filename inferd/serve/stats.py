"""Per-model inference statistics in the shape of Triton's statistics extension.

Tools that scrape `/v2/models/stats` (perf_analyzer, dashboards) expect these
exact field names: counts plus cumulative nanoseconds per phase, and a
per-batch-size breakdown. The same numbers feed Triton's Prometheus metric names
(`inferd.serve.metrics.triton`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, times: int = 1) -> None:
        self.count += times
        self.ns += int(seconds * 1e9) * times

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def on_request(self, ok: bool, seconds: float) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(seconds)
            self.last_inference_ms = int(time.time() * 1000)

    def on_batch(self, rows: int, requests: int, compute_s: float) -> None:
        with self._lock:
            self.inference_count += rows
            self.execution_count += 1
            # Per request, as Triton counts it: dashboards divide it by the success count for compute per request.
            self.compute_infer.add(compute_s, times=requests)
            self.batches.setdefault(rows, _Duration()).add(compute_s)

    def on_dequeued(self, queue_s: float) -> None:
        with self._lock:
            self.queue.add(queue_s)

    def as_triton(self, name: str, version: str) -> dict[str, Any]:
        with self._lock:
            zero = _Duration().as_dict()
            return {
                "name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.as_dict(), "fail": self.fail.as_dict(), "queue": self.queue.as_dict(),
                    "compute_input": zero, "compute_infer": self.compute_infer.as_dict(), "compute_output": zero,
                    "cache_hit": zero, "cache_miss": zero,
                },
                "batch_stats": [
                    {"batch_size": size, "compute_input": zero, "compute_infer": d.as_dict(), "compute_output": zero}
                    for size, d in sorted(self.batches.items())
                ],
            }
