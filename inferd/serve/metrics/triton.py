"""Triton's Prometheus metric names, so dashboards and autoscalers written for Triton read inferd unchanged.

Grafana boards, alert rules and autoscaler triggers built for Triton query
`nv_inference_request_success`, `nv_inference_queue_duration_us` and the like
by name. inferd derives them at scrape time from the statistics it already keeps
for the `/v2/models/stats` extension, so they cost nothing per request.

Triton's series carry no `_total` suffix. prometheus_client always adds one to a
counter's samples, so the cumulative series are written untyped under Triton's
exact names: a query written for Triton matches them as they are, and `rate()`
works on them as on any counter.

The compute series are Triton's three phases as `/v2/models/stats` reports them
(`inferd.serve.phases`): input (decoding, preprocessing, stacking), infer (the
model), output (splitting, encoding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric

_LABELS = ("model", "version")

# name, help, the value from a Triton statistics record (ModelStats.as_triton)
_CUMULATIVE: tuple[tuple[str, str, Callable[[dict[str, Any]], float]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s["inference_stats"]["success"]["count"]),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s["inference_stats"]["fail"]["count"]),
    ("nv_inference_count", "Number of inferences performed (a request counts its batch size)",
     lambda s: s["inference_count"]),
    ("nv_inference_exec_count", "Number of model executions performed (inferences / executions = mean batch size)",
     lambda s: s["execution_count"]),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
     lambda s: s["inference_stats"]["success"]["ns"] / 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
     lambda s: s["inference_stats"]["queue"]["ns"] / 1000),
    ("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds",
     lambda s: s["inference_stats"]["compute_input"]["ns"] / 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
     lambda s: s["inference_stats"]["compute_infer"]["ns"] / 1000),
    ("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds",
     lambda s: s["inference_stats"]["compute_output"]["ns"] / 1000),
)


@dataclass(frozen=True)
class ModelSnapshot:
    """One model version at scrape time: its Triton statistics record and its queued requests."""

    statistics: dict[str, Any]
    pending: int


def triton_families(models: Sequence[ModelSnapshot], cpu: CpuUsage) -> Iterator[Metric]:
    for name, documentation, read in _CUMULATIVE:
        family = Metric(name, documentation, "unknown")
        for model in models:
            labels = {"model": model.statistics["name"], "version": model.statistics["version"]}
            family.add_sample(name, labels, float(read(model.statistics)))
        yield family
    pending = GaugeMetricFamily("nv_inference_pending_request_count",
                                "Instantaneous number of pending requests awaiting execution per-model",
                                labels=_LABELS)
    for model in models:
        pending.add_metric([model.statistics["name"], model.statistics["version"]], model.pending)
    yield pending
    yield from cpu.families()


class CpuUsage:
    """Triton's CPU gauges from /proc (Linux); elsewhere they are left out rather than faked.

    Utilization is the busy share of all cores since the previous scrape, as
    Triton reports it per polling interval; the first scrape covers the time
    since the server started.
    """

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self._proc = proc
        self._last = self._times()

    def _times(self) -> tuple[int, int] | None:
        """(busy, total) jiffies of all cores, or None where /proc/stat is missing."""
        try:
            fields = (self._proc / "stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)

    def families(self) -> Iterator[Metric]:
        now = self._times()
        if now is not None:
            busy, total = now
            last_busy, last_total = self._last or (0, 0)
            self._last = now
            share = (busy - last_busy) / (total - last_total) if total > last_total else 0.0
            yield GaugeMetricFamily("nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]", value=share)
        memory = self._memory()
        if memory is not None:
            total_bytes, used_bytes = memory
            yield GaugeMetricFamily("nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=total_bytes)
            yield GaugeMetricFamily("nv_cpu_memory_used_bytes", "CPU used memory (RAM), in bytes", value=used_bytes)

    def _memory(self) -> tuple[int, int] | None:
        try:
            lines = (self._proc / "meminfo").read_text().splitlines()
        except OSError:
            return None
        kib = {line.split(":")[0]: int(line.split()[1]) for line in lines if line.split()[1:2]}
        if "MemTotal" not in kib or "MemAvailable" not in kib:
            return None
        return kib["MemTotal"] * 1024, (kib["MemTotal"] - kib["MemAvailable"]) * 1024
