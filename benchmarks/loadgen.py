"""The load generator: closed- or open-loop clients against a V2 endpoint, timing every request.

Run as a script by `harness.LoadRun`, never imported by a server's process:

    python benchmarks/loadgen.py SPEC.json      # prints one JSON object (the result) on stdout

The generator runs in its own process so that its CPU time is visible (it shares the machine's cores with the
server) and so that it imports only the HTTP client: payloads are prepared by the orchestrator and handed over
as files. Two modes:

* closed loop: `concurrency` workers, each sending requests back-to-back (a new one when the last answered);
* open loop: requests fired at a fixed `rate` whatever the answers, with at most `max_outstanding` in flight
  (a send that would exceed the cap is skipped and counted, never queued in the client).

Both loops are bounded by time and stop by themselves; every request has a client-side timeout. Three clients:

* `aiohttp` (the default): the cheapest in CPU per request of the general-purpose clients (tritonclient.http
  costs a little more, httpx, `"client": "httpx"`, several times more);
* `raw`: keep-alive HTTP/1.1 on asyncio sockets, the request written as prepared bytes and the response parsed
  by httptools, in the spirit of wrk and Triton's perf_analyzer: a load generator that spends as little as
  possible of the two cores it shares with the server, so that what it measures is the server's work.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from load_clients import Client, GrpcInputs, SharedMemoryInputs

INFERENCE_HEADER = "Inference-Header-Content-Length"


class Record(NamedTuple):
    """One request as the generator saw it; written to the results as a list in this order (`RECORD_COLUMNS`)."""

    start_s: float  # when it was sent, from the start of the measured window (negative in the warm-up)
    latency_s: float
    status: int  # the HTTP status, 0 when none came
    retry_after: str | None  # the Retry-After header of a refusal
    version: str | None  # the model version that answered (with "parse_version")
    client_error: str | None  # what went wrong on the client's side: a timeout, a broken connection, a bad body

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.client_error is None


RECORD_COLUMNS = list(Record._fields)
"""What each of a generator's `records` holds (ask for them with `"records": true` in the spec)."""


def take_records(result: dict[str, Any]) -> list[Record]:
    """The records a generator returned (as JSON lists), taken out of its result."""
    return [Record(*r) for r in result.pop("records")]


# ---------------------------------------------------------------------------------------------- statistics


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
    """Milliseconds: count, mean, p50/p90/p99, min and max."""
    values = sorted(s * 1000 for s in seconds)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
    return {
        "count": len(values), "mean": round(sum(values) / len(values), 3),
        "p50": round(percentile(values, 50) or 0, 3), "p90": round(percentile(values, 90) or 0, 3),
        "p99": round(percentile(values, 99) or 0, 3), "min": round(values[0], 3), "max": round(values[-1], 3),
    }



def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    bodies = [(Path(p["path"]).read_bytes(), str(p["header_length"])) for p in spec["payloads"]]
    mode = spec["mode"]
    warmup, duration = float(spec.get("warmup_s", 0)), float(spec["duration_s"])
    timeout = float(spec.get("request_timeout_s", 30))
    parse_version = bool(spec.get("parse_version", False))
    expected_output = int(spec.get("expected_output_bytes", 4000))
    cap = int(spec.get("max_outstanding", 256)) if mode == "open" else int(spec["concurrency"])
    clock = time.perf_counter  # not loop.time(): uvloop's clock ticks in whole milliseconds
    records: list[Record] = []
    skipped = 0
    max_lag = 0.0

    shared = SharedMemoryInputs(spec["payloads"], cap, expected_output) if spec.get("shared_memory") else None
    if shared and mode != "closed":
        raise ValueError("shared memory inputs need the closed mode: one region per concurrent request")

    grpc_inputs = GrpcInputs(spec["payloads"], spec["grpc_address"], spec["model"]) if spec.get("grpc_address") else None

    async with Client(spec.get("client", "aiohttp"), cap, timeout) as client:
        if shared:
            await shared.register(client, spec["url"])

        async def one(index: int) -> bool:
            started = clock()
            if grpc_inputs:
                status, error = await grpc_inputs.infer(index)
                records.append(Record(started - window_start, clock() - started, status, None, None, error))
                return status == 200 and error is None
            if shared:
                body, headers = shared.request(index, index % cap), {"Content-Type": "application/json"}
            else:
                body, header_length = bodies[index % len(bodies)]
                headers = {INFERENCE_HEADER: header_length, "Content-Type": "application/octet-stream"}
            status, retry, version, error = 0, None, None, None
            try:
                status, response_headers, payload = await client.post(spec["url"], body, headers)
                retry = response_headers.get("Retry-After")
                if status == 200 and shared:
                    if INFERENCE_HEADER in response_headers or len(shared.output(index % cap)) != expected_output:
                        error = "unexpected_body"
                elif status == 200:
                    length = int(response_headers.get(INFERENCE_HEADER, "0") or 0)
                    if length == 0 or len(payload) != length + expected_output:
                        error = "unexpected_body"
                    elif parse_version:
                        version = json.loads(payload[:length]).get("model_version")
            except TimeoutError:
                error = "client_timeout"
            except Exception as exc:
                error = type(exc).__name__
            records.append(Record(started - window_start, clock() - started, status, retry, version, error))
            return status == 200 and error is None

        cpu_start = _cpu_seconds()
        t0 = clock()
        window_start = t0 + warmup
        window_end = window_start + duration
        Path(spec["started_file"]).write_text(repr(time.time()))

        if mode == "closed":
            concurrency = int(spec["concurrency"])

            backoff = float(spec.get("backoff_after_failure_s", 0))

            async def worker(first: int) -> None:
                index = first
                while clock() < window_end:
                    if not await one(index) and backoff:
                        await asyncio.sleep(backoff)  # a refused request is answered at once: do not spin on it
                    index += concurrency

            await asyncio.gather(*(worker(k) for k in range(concurrency)))
        else:
            rate = float(spec["rate"])
            tasks: set[asyncio.Task[Any]] = set()
            total = int(rate * (warmup + duration))
            for index in range(total):
                due = t0 + index / rate
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                max_lag = max(max_lag, clock() - due)
                if len(tasks) >= cap:
                    skipped += 1
                    continue
                task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(one(index))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=timeout + 10)
        elapsed = clock() - t0
        client_cpu = _cpu_seconds() - cpu_start
        if shared:
            await shared.unregister(client, spec["url"])
            shared.close()
        if grpc_inputs:
            await grpc_inputs.close()

    in_window = [r for r in records if 0 <= r.start_s < duration]
    finished_in_window = [r for r in records if 0 <= r.start_s + r.latency_s <= duration]
    ok = [r for r in in_window if r.ok]
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in in_window:
        if r.client_error is not None:
            errors[r.client_error] = errors.get(r.client_error, 0) + 1
        else:
            statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
    result: dict[str, Any] = {
        "mode": mode, "client": spec.get("client", "aiohttp"),
        "concurrency": spec.get("concurrency"), "rate_rps": spec.get("rate"), "max_outstanding": cap,
        "warmup_s": warmup, "duration_s": duration, "elapsed_s": round(elapsed, 3),
        "payload_bytes": [len(b) for b, _ in bodies],
        "sent_total": len(records), "sent_in_window": len(in_window),
        "skipped_at_cap": skipped, "max_send_lag_ms": round(max_lag * 1000, 3),
        "statuses": statuses, "errors": errors,
        "throughput_rps": round(sum(1 for r in finished_in_window if r.ok) / duration, 3),
        "latency_ms": latency_summary([r.latency_s for r in ok]),
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / max(len(records), 1), 4),
        "window_start_unix": time.time() - (clock() - window_start),
    }
    if spec.get("records"):
        result["records"] = [r._replace(start_s=round(r.start_s, 5), latency_s=round(r.latency_s, 5)) for r in records]
    return result


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("client") == "raw":
        import uvloop  # the raw client is about speed; uvicorn[standard] brings uvloop

        result = uvloop.run(_generate(spec))
    else:
        result = asyncio.run(_generate(spec))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
