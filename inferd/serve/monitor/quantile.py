"""Counter deltas and histogram quantiles, computed as Prometheus computes `rate()` and `histogram_quantile()`.

`inferd top` shows the same p50/p99 a Grafana panel on `histogram_quantile(0.99, rate(..._bucket[1m]))` would, so the
numbers agree wherever both are looked at; only the window differs (the last scrape interval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# A histogram's buckets: cumulative count by upper bound (`le`), +Inf included.
Buckets = Mapping[float, float]


def counter_delta(now: float, before: float) -> float:
    """Increase of a counter between two scrapes; a counter that went down was reset (the server restarted), so all
    of its current value is new, as in Prometheus's `increase()`."""
    return now - before if now >= before else now


def bucket_deltas(now: Buckets, before: Buckets) -> dict[float, float]:
    """The buckets' increase between two scrapes: the histogram of the observations made in between.

    A reset in any bucket means the whole histogram restarted, so the current counts are the increase.
    """
    if any(now.get(bound, 0.0) < count for bound, count in before.items()):
        return dict(now)
    return {bound: count - before.get(bound, 0.0) for bound, count in now.items()}


def histogram_quantile(q: float, buckets: Buckets) -> float:
    """The q-quantile of cumulative buckets, by Prometheus's rules (promql/quantile.go, `bucketQuantile`).

    The rank q·n falls in the first bucket whose cumulative count reaches it; the value is interpolated linearly
    between that bucket's lower and upper bounds (the lowest bucket starts at 0). A rank in the +Inf bucket gives the
    highest finite bound. NaN when there are no observations or no +Inf bucket.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    ordered = sorted(buckets.items())
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return math.nan
    bounds = [bound for bound, _ in ordered]
    counts = _monotonic([count for _, count in ordered])
    observations = counts[-1]
    if observations <= 0:
        return math.nan
    rank = q * observations
    index = next(i for i, count in enumerate([*counts[:-1], math.inf]) if count >= rank)
    if index == len(counts) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[index], counts[index]
    if index > 0:
        start = bounds[index - 1]
        count -= counts[index - 1]
        rank -= counts[index - 1]
    if count == 0:  # q = 0 before any observation: Go's 0/0
        return math.nan
    return start + (end - start) * (rank / count)


def _monotonic(counts: list[float]) -> list[float]:
    """Cumulative counts scraped mid-update can dip; Prometheus levels them to the running maximum."""
    levelled, highest = [], 0.0
    for count in counts:
        highest = max(highest, count)
        levelled.append(highest)
    return levelled
