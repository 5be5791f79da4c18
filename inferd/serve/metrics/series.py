"""Prometheus metrics for one server instance, exposed on `GET /metrics`.

Every `ServerMetrics` owns its registry instead of using prometheus' global one,
so a process (or a test session) can build many apps without "duplicated
timeseries" errors. Values that already live elsewhere (queue depth, requests in
flight) are read from callbacks at scrape time rather than mirrored into gauges:
nothing can drift, and a model that is unloaded simply stops being reported.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from inferd.serve.metrics.triton import CpuUsage, ModelSnapshot, triton_families
from inferd.serve.phases import Phases
from inferd.serve.stats import ModelStats

log = logging.getLogger("inferd.serve")

# From a cached tiny model on a GPU (sub-millisecond) to a cold CPU batch of large images.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Powers of two, because batchers fill up to power-of-two maximum batch sizes.
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class _TrackedModel:
    load_seconds: float
    queue_depth: Callable[[], int]
    in_flight: Callable[[], int]
    stats: ModelStats
    memory_bytes: int | None = None
    queue_capacity: int | None = None


class _LiveCollector:
    """Reads per-model gauges, Triton's metrics and memory at scrape time, so the exposition always matches the repository."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # models load and unload on worker threads while the loop scrapes
        self._models: dict[tuple[str, str], _TrackedModel] = {}
        self._failing: set[str] = set()  # models whose latest load failed: an alert must see the state, not a rate
        self._cpu = CpuUsage()

    def track(self, name: str, version: str, model: _TrackedModel) -> None:
        with self._lock:
            self._models[name, version] = model
            self._failing.discard(name)

    def failed(self, name: str) -> None:
        with self._lock:
            self._failing.add(name)

    def forget(self, name: str, version: str) -> None:
        with self._lock:
            self._models.pop((name, version), None)

    def knows(self, name: str, version: str | None = None) -> bool:
        with self._lock:
            if version is None:
                return any(tracked_name == name for tracked_name, _ in self._models)
            return (name, version) in self._models

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            models = sorted(self._models.items())
            failing = sorted(self._failing)
        in_flight = GaugeMetricFamily("inferd_requests_in_flight", "Predictions running or waiting, per model.",
                                      labels=["model"])
        queue_depth = GaugeMetricFamily("inferd_queue_depth", "Requests waiting in the batch queue, per model.",
                                        labels=["model"])
        load_seconds = GaugeMetricFamily("inferd_model_load_seconds", "Seconds the model version took to load.",
                                         labels=["model", "version"])
        capacity = GaugeMetricFamily("inferd_queue_capacity", "Requests the batch queue holds before answering 429, "
                                     "per model.", labels=["model"])
        memory = GaugeMetricFamily("inferd_model_memory_bytes", "Memory the model version took when it loaded.",
                                   labels=["model", "version"])
        load_failed = GaugeMetricFamily("inferd_model_load_failed", "1 while the latest load of the model failed.",
                                        labels=["model"])
        depths = _read_each(models, lambda model: model.queue_depth())
        for name, value in _per_model(_read_each(models, lambda model: model.in_flight())).items():
            in_flight.add_metric([name], value)
        for name, value in _per_model(depths).items():
            queue_depth.add_metric([name], value)
        for (name, version), model in models:
            load_seconds.add_metric([name, version], model.load_seconds)
            if model.memory_bytes is not None:
                memory.add_metric([name, version], model.memory_bytes)
        for name, value in _per_model({key: model.queue_capacity for key, model in models
                                       if model.queue_capacity is not None}).items():
            capacity.add_metric([name], value)
        for name in failing:
            load_failed.add_metric([name], 1)
        yield from (in_flight, queue_depth, capacity, load_seconds, memory, load_failed)
        yield GaugeMetricFamily("inferd_models_loaded", "Model versions loaded and serving.", value=len(models))
        yield GaugeMetricFamily("inferd_process_resident_memory_bytes", "Resident memory of the server process.",
                                value=resident_memory_bytes())
        yield from triton_families([ModelSnapshot(model.stats.as_triton(*key), depths[key])
                                    for key, model in models if key in depths], self._cpu)


def _read_each(models: list[tuple[tuple[str, str], _TrackedModel]],
               read: Callable[[_TrackedModel], int]) -> dict[tuple[str, str], int]:
    """Each version's value; a callback that fails (a model closing mid-scrape) is left out, not fatal to the scrape."""
    values: dict[tuple[str, str], int] = {}
    for (name, version), model in models:
        try:
            values[name, version] = read(model)
        except Exception:
            log.debug("metrics callback for %s:%s failed; skipping it this scrape", name, version, exc_info=True)
    return values


def _per_model(values: dict[tuple[str, str], int]) -> dict[str, int]:
    """inferd's own gauges label the model only, so its versions add up."""
    totals: dict[str, int] = {}
    for (name, _), value in values.items():
        totals[name] = totals.get(name, 0) + value
    return totals


def resident_memory_bytes() -> int:
    """Current RSS from /proc; elsewhere only the peak is available, which still catches leaks."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


class BatchSeries:
    """One model version's batch series (a `BatchObserver` of the scheduler), labels bound once so the hot path skips
    label lookups."""

    def __init__(self, metrics: ServerMetrics, model: str, version: str) -> None:
        self._batch_size = metrics.batch_size.labels(model, version)
        self._compute = metrics.compute_duration.labels(model, version)
        self._queue = metrics.queue_duration.labels(model, version)

    def on_batch(self, rows: int, requests: int, phases: Phases) -> None:
        """Count the model's compute once per request it served, so queue + compute add up to request time per
        request."""
        self._batch_size.observe(rows)
        for _ in range(requests):
            self._compute.observe(phases.infer_s)

    def on_dequeued(self, queue_s: float) -> None:
        self._queue.observe(queue_s)


class ServerMetrics:
    """All metrics of one server, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("inferd_requests", "HTTP requests answered.", ["model", "version", "route", "status"],
                                registry=self.registry)
        self.request_duration = self._latency("inferd_request_duration_seconds", "Time from request to response.")
        self.queue_duration = self._latency("inferd_queue_duration_seconds", "Time a request waited for its batch.")
        self.compute_duration = self._latency("inferd_compute_duration_seconds", "Model compute time of a request's batch.")
        self.batch_size = Histogram("inferd_batch_size", "Rows per batch sent to the model.", ["model", "version"],
                                    buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.load_failures = Counter("inferd_model_load_failures", "Loads of a model that failed.", ["model"],
                                     registry=self.registry)
        self._live = _LiveCollector()
        self.registry.register(self._live)
        ProcessCollector(registry=self.registry)  # reports nothing off Linux, which is fine
        PlatformCollector(registry=self.registry)

    def _latency(self, name: str, documentation: str) -> Histogram:
        return Histogram(name, documentation, ["model", "version"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_request(self, model: str, version: str, route: str, status: int | str, seconds: float) -> None:
        """Names of models that are not loaded become "" so that clients cannot grow the label set at will."""
        if not self._live.knows(model):
            model = ""
        if not self._live.knows(model, version):
            version = ""
        self.requests.labels(model, version, route, str(status)).inc()
        self.request_duration.labels(model, version).observe(seconds)

    def observer_for(self, model: str, version: str) -> BatchSeries:
        return BatchSeries(self, model, version)

    def track_model(self, name: str, version: str, load_seconds: float,
                    queue_depth: Callable[[], int], in_flight: Callable[[], int], stats: ModelStats,
                    memory_bytes: int | None = None, queue_capacity: int | None = None) -> None:
        self._live.track(name, version, _TrackedModel(load_seconds, queue_depth, in_flight, stats, memory_bytes,
                                                      queue_capacity))

    def model_failed(self, name: str) -> None:
        """A load that failed: counted, and reported as failing until a load of the model succeeds."""
        self.load_failures.labels(name).inc()
        self._live.failed(name)

    def forget_model(self, name: str, version: str) -> None:
        self._live.forget(name, version)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_router(metrics: ServerMetrics) -> APIRouter:
    """`GET /metrics`, for an app to mount: the server's own (behind the API key when it has one) or the
    metrics port's."""
    router = APIRouter(tags=["monitoring"])

    # async: the callbacks then run on the event loop, the thread that owns the batch queues they read.
    @router.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    return router
