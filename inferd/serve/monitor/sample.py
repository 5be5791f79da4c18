"""Two scrapes of one server become what `inferd top` shows: per model rates and quantiles over the interval between
them, per server memory and CPU.

Counters and histograms are cumulative, so everything per second comes from the difference of two scrapes divided
by the time between their arrivals; gauges (queue depth, in flight, RSS) are read from the later scrape. A model's
versions add up to one row, as inferd's own gauges label the model only.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from inferd.serve.monitor.quantile import bucket_deltas, counter_delta, histogram_quantile
from inferd.serve.monitor.scrape import Scrape

# The answers that mean "not now" rather than "wrong": queue full, not ready or draining, deadline passed.
REFUSALS = ("429", "503", "504")


@dataclass(frozen=True)
class ModelSample:
    """One model on one server over one interval; rates are None until two scrapes exist."""

    model: str
    queue_depth: float
    in_flight: float
    requests_per_s: float | None = None
    p50_s: float | None = None
    p99_s: float | None = None
    # where a request's time went, mean over the interval: waiting for its batch, and its batch's compute
    queue_time_s: float | None = None
    compute_time_s: float | None = None
    batch_size_mean: float | None = None
    # batches sent to the model in the interval, by size range ("1", "2", "3-4", ..., ">128")
    batch_sizes: dict[str, float] = field(default_factory=dict)
    refusals_per_s: float | None = None
    refusals: dict[str, float] = field(default_factory=dict)  # answers in the interval, by status
    errors_per_s: float | None = None  # other 4xx/5xx answers


@dataclass(frozen=True)
class ServerSample:
    """One server at one refresh: down with the reason, or up with its process and its models."""

    url: str
    up: bool
    error: str | None = None
    interval_s: float | None = None
    rss_bytes: float | None = None
    cpu_percent: float | None = None  # of one core, as top(1) counts
    models: list[ModelSample] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def down(url: str, reason: str) -> ServerSample:
    return ServerSample(url, up=False, error=reason)


def compare(url: str, before: Scrape | None, now: Scrape) -> ServerSample:
    """The server as `now` shows it, with rates over the time since `before` (None: the first scrape)."""
    if before is not None and before.value("process_start_time_seconds") != now.value("process_start_time_seconds"):
        before = None  # restarted in between: the old counters belong to another process
    seconds = now.at - before.at if before is not None else None
    rss = now.value("process_resident_memory_bytes") or now.value("inferd_process_resident_memory_bytes")
    cpu = None
    if before is not None and seconds:
        cpu_now, cpu_before = now.value("process_cpu_seconds_total"), before.value("process_cpu_seconds_total")
        if cpu_now is not None and cpu_before is not None:
            cpu = 100 * counter_delta(cpu_now, cpu_before) / seconds
    models = [_model(name, before, now, seconds) for name in _models(now)]
    return ServerSample(url, up=True, interval_s=seconds, rss_bytes=rss, cpu_percent=cpu, models=models)


def _models(scrape: Scrape) -> list[str]:
    names = {model for series in ("inferd_queue_depth", "inferd_requests_in_flight", "inferd_requests_total")
             for model, _, _ in scrape.by_model(series)}
    return sorted(names)


def _model(name: str, before: Scrape | None, now: Scrape, seconds: float | None) -> ModelSample:
    queue = sum(value for model, _, value in now.by_model("inferd_queue_depth") if model == name)
    in_flight = sum(value for model, _, value in now.by_model("inferd_requests_in_flight") if model == name)
    if before is None or not seconds:
        return ModelSample(name, queue, in_flight)
    answers = _increase(_statuses(now, name), _statuses(before, name))
    latency = bucket_deltas(_buckets(now, "inferd_request_duration_seconds", name),
                            _buckets(before, "inferd_request_duration_seconds", name))
    batches = bucket_deltas(_buckets(now, "inferd_batch_size", name), _buckets(before, "inferd_batch_size", name))
    rows = counter_delta(_total(now, "inferd_batch_size_sum", name), _total(before, "inferd_batch_size_sum", name))
    executions = max(batches.values(), default=0.0)
    refusals = {status: count for status, count in answers.items() if status in REFUSALS and count}
    errors = sum(count for status, count in answers.items() if status not in REFUSALS and status.isdigit() and int(status) >= 400)
    return ModelSample(
        name, queue, in_flight,
        requests_per_s=sum(answers.values()) / seconds,
        p50_s=_finite(histogram_quantile(0.5, latency)),
        p99_s=_finite(histogram_quantile(0.99, latency)),
        queue_time_s=_mean(before, now, "inferd_queue_duration_seconds", name),
        compute_time_s=_mean(before, now, "inferd_compute_duration_seconds", name),
        batch_size_mean=rows / executions if executions else None,
        batch_sizes=_distribution(batches),
        refusals_per_s=sum(refusals.values()) / seconds,
        refusals=refusals,
        errors_per_s=errors / seconds,
    )


def _statuses(scrape: Scrape, name: str) -> dict[str, float]:
    """Answers so far by status, over every route and version of the model."""
    counts: dict[str, float] = defaultdict(float)
    for _, labels, value in scrape.by_model("inferd_requests_total", model=name):
        counts[labels.get("status", "")] += value
    return counts


def _increase(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: counter_delta(value, before.get(key, 0.0)) for key, value in now.items()}


def _buckets(scrape: Scrape, histogram: str, name: str) -> dict[float, float]:
    """The cumulative buckets of one model's histogram, its versions summed (as `sum by (le)` would)."""
    buckets: dict[float, float] = defaultdict(float)
    for _, labels, value in scrape.by_model(f"{histogram}_bucket", model=name):
        buckets[float(labels["le"])] += value
    return buckets


def _total(scrape: Scrape, series: str, name: str) -> float:
    return sum(value for _, _, value in scrape.by_model(series, model=name))


def _mean(before: Scrape, now: Scrape, histogram: str, name: str) -> float | None:
    """A histogram's mean observation over the interval: the increase of its sum over that of its count."""
    count = counter_delta(_total(now, f"{histogram}_count", name), _total(before, f"{histogram}_count", name))
    if not count:
        return None
    return counter_delta(_total(now, f"{histogram}_sum", name), _total(before, f"{histogram}_sum", name)) / count


def _distribution(increases: dict[float, float]) -> dict[str, float]:
    """Cumulative bucket increases to batches per size range; batch sizes are whole rows, so (2, 4] is "3-4"."""
    sizes, below = {}, 0.0
    lower = 0.0
    for bound, cumulative in sorted(increases.items()):
        count = cumulative - below
        below = cumulative
        if count > 0:
            sizes[_size_range(lower, bound)] = count
        lower = bound
    return sizes


def _size_range(lower: float, upper: float) -> str:
    if math.isinf(upper):
        return f">{lower:g}"
    return f"{upper:g}" if upper - lower <= 1 else f"{lower + 1:g}-{upper:g}"


def _finite(value: float) -> float | None:
    """NaN (no request in the interval) shows as no value rather than a number."""
    return None if math.isnan(value) else value
