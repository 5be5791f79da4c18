"""The concurrency sweep: each level measured in stable windows, one client kept across levels, and the report.

The load generator is this process: its CPU time (`records.cpu_seconds`) is what the report calls the client's,
so a user on a small machine sees when the client, not the server, sets the pace.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import platform
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inferd.bench.load.clients import Client
from inferd.bench.load.records import Record, clock, exchange
from inferd.bench.load.target import Target
from inferd.bench.load.windows import Level, WindowPlan, measure_level
from inferd.bench.load.workload import Workload

CLIENTS = ("raw", "aiohttp", "httpx")
CSV_COLUMNS = ["concurrency", "throughput_rps", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "requests",
               "errors", "outcomes", "windows", "stable", "client_cpu_ms_per_request", "client_cpu_share"]


@dataclass
class LoadtestReport:
    target: dict[str, Any]
    workload: str
    client: str
    plan: dict[str, Any]
    machine: dict[str, Any]
    levels: list[Level] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "workload": self.workload, "client": self.client, "plan": self.plan,
                "machine": self.machine, "levels": [level.as_dict() for level in self.levels]}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per level, as the CSV holds it."""
        rows = []
        for level in self.levels:
            latency = level.latency_ms
            rows.append({
                "concurrency": level.concurrency, "throughput_rps": level.throughput_rps,
                **{f"{q}_ms": latency[q] for q in ("p50", "p90", "p95", "p99", "mean")},
                "requests": level.requests, "errors": level.errors,
                "outcomes": " ".join(f"{k}:{v}" for k, v in sorted(level.outcomes.items())),
                "windows": level.windows, "stable": level.stable,
                "client_cpu_ms_per_request": level.client_cpu_ms_per_request,
                "client_cpu_share": level.client_cpu_share,
            })
        return rows

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")

    def write_csv(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows())


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


async def _sweep(target: Target, workload: Workload, concurrencies: list[int], plan: WindowPlan, client_kind: str,
                 timeout_s: float, on_level: Callable[[Level], None]) -> list[Level]:
    levels: list[Level] = []
    samples: dict[str, str] = {}
    if target.protocol == "grpc":
        from inferd.bench.load.triton_grpc import GrpcInputs

        grpc = GrpcInputs(target.address, target.model, workload.tensors, target.outputs, target.headers, timeout_s)

        async def one(index: int, t0: float) -> Record:
            started = clock()
            status, error = await grpc.infer(index)
            return Record(started - t0, clock() - started, status, None, None, error)

        try:
            for concurrency in concurrencies:
                levels.append(_finished(await measure_level(one, concurrency, plan), grpc.refusals, on_level))
        finally:
            await grpc.close()
        return levels

    prepared = [p._replace(headers={**p.headers, **target.headers}) for p in workload.prepared]
    url = workload.url
    async with Client(client_kind, max(concurrencies), timeout_s) as client:

        async def one(index: int, t0: float) -> Record:
            request = prepared[index % len(prepared)]
            started = clock()
            answer = await exchange(lambda: client.post(url, request.body, request.headers), request.check)
            if answer.status not in (0, 200) and str(answer.status) not in samples:
                samples[str(answer.status)] = answer.body[:300].decode("utf-8", "replace")
            return Record(started - t0, clock() - started, answer.status, answer.headers.get("Retry-After"),
                          None, answer.error)

        for concurrency in concurrencies:
            levels.append(_finished(await measure_level(one, concurrency, plan), samples, on_level))
    return levels


def _finished(level: Level, samples: dict[str, str], on_level: Callable[[Level], None]) -> Level:
    """The level with one refused answer's start beside its error counts, handed to the caller as it finishes."""
    refused = [outcome for outcome in level.outcomes if outcome in samples]
    if refused:
        level.error_sample = f"{refused[0]}: {samples[refused[0]]}"
    on_level(level)
    return level


def run_sweep(target: Target, workload: Workload, concurrencies: list[int], plan: WindowPlan,
              client_kind: str = "raw", timeout_s: float = 30.0,
              on_level: Callable[[Level], None] = lambda level: None) -> LoadtestReport:
    """Measure every level in turn; the raw client runs on uvloop (uvicorn[standard] brings it), as the
    benchmarks' generator does."""
    if client_kind == "raw" and target.address.startswith("https:"):
        client_kind = "aiohttp"  # the raw client speaks plain HTTP only
    started = time.time()
    sweep: Coroutine[Any, Any, list[Level]] = _sweep(target, workload, concurrencies, plan, client_kind, timeout_s,
                                                     on_level)
    if client_kind == "raw" and target.protocol == "http":
        import uvloop

        levels = uvloop.run(sweep)
    else:
        levels = asyncio.run(sweep)
    return LoadtestReport(
        target={"protocol": target.protocol, "address": target.address, "model": target.model,
                "versions": target.metadata.get("versions")},
        workload=workload.describe, client=client_kind if target.protocol == "http" else "tritonclient.grpc.aio",
        plan={**asdict(plan), "concurrency": concurrencies, "request_timeout_s": timeout_s,
              "started_unix": round(started, 3)},
        machine=machine(), levels=levels)
