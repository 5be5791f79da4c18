"""The load generator: closed- or open-loop clients against a V2 endpoint, timing every request.

Run as a script by `harness.LoadRun`, never imported by a server's process:

    python benchmarks/loadgen.py SPEC.json      # prints one JSON object (the result) on stdout

The generator runs in its own process so that its CPU time is visible (it shares the machine's cores with the
server) and so that it imports only the client core it shares with `inferd loadtest` (`inferd.bench.load`: the
clients, the request's timing and checks, the closed loop), never a model: payloads are prepared by the
orchestrator and handed over as files. Two modes:

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
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from load_clients import SharedMemoryInputs

from inferd.bench.load.bodies import INFERENCE_HEADER
from inferd.bench.load.clients import Client
from inferd.bench.load.records import (
    RECORD_COLUMNS,
    Record,
    clock,
    closed_loop,
    cpu_seconds,
    exchange,
    latency_summary,
    percentile,
    tally,
)
from inferd.bench.load.triton_grpc import GrpcInputs

__all__ = ["INFERENCE_HEADER", "RECORD_COLUMNS", "Record", "latency_summary", "percentile", "take_records", "tally"]


def take_records(result: dict[str, Any]) -> list[Record]:
    """The records a generator returned (as JSON lists), taken out of its result."""
    return [Record(*r) for r in result.pop("records")]


def grpc_inputs(spec: dict[str, Any]) -> GrpcInputs:
    """The bare tensor files as tritonclient's inputs, named and shaped as `payloads.write_payloads` described them."""
    described = spec["payloads"][0]["input"]
    tensors = [[(described["name"], described["datatype"],
                 np.frombuffer(Path(p["path"]).read_bytes(), np.float32).reshape(described["shape"]))]
               for p in spec["payloads"]]
    return GrpcInputs(spec["grpc_address"], spec["model"], tensors, ["logits"])


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    bodies = [(Path(p["path"]).read_bytes(), str(p["header_length"])) for p in spec["payloads"]]
    mode = spec["mode"]
    warmup, duration = float(spec.get("warmup_s", 0)), float(spec["duration_s"])
    timeout = float(spec.get("request_timeout_s", 30))
    parse_version = bool(spec.get("parse_version", False))
    expected_output = int(spec.get("expected_output_bytes", 4000))
    cap = int(spec.get("max_outstanding", 256)) if mode == "open" else int(spec["concurrency"])
    records: list[Record] = []
    skipped = 0
    max_lag = 0.0

    shared = SharedMemoryInputs(spec["payloads"], cap, expected_output) if spec.get("shared_memory") else None
    if shared and mode != "closed":
        raise ValueError("shared memory inputs need the closed mode: one region per concurrent request")

    grpc = grpc_inputs(spec) if spec.get("grpc_address") else None

    async with Client(spec.get("client", "aiohttp"), cap, timeout) as client:
        if shared:
            await shared.register(client, spec["url"])

        def binary_answer(headers: Mapping[str, str], payload: bytes) -> str | None:
            length = int(headers.get(INFERENCE_HEADER, "0") or 0)
            return "unexpected_body" if length == 0 or len(payload) != length + expected_output else None

        async def one(index: int) -> bool:
            started = clock()
            if grpc:
                status, error = await grpc.infer(index)
                records.append(Record(started - window_start, clock() - started, status, None, None, error))
                return status == 200 and error is None
            if shared:
                slot = index % cap
                body, headers = shared.request(index, slot), {"Content-Type": "application/json"}

                def check(headers: Mapping[str, str], payload: bytes) -> str | None:
                    assert shared is not None
                    wrong = INFERENCE_HEADER in headers or len(shared.output(slot)) != expected_output
                    return "unexpected_body" if wrong else None
            else:
                body, header_length = bodies[index % len(bodies)]
                headers = {INFERENCE_HEADER: header_length, "Content-Type": "application/octet-stream"}
                check = binary_answer
            answer = await exchange(lambda: client.post(spec["url"], body, headers), check)
            version = None
            if parse_version and answer.status == 200 and answer.error is None:
                version = json.loads(answer.body[:int(answer.headers[INFERENCE_HEADER])]).get("model_version")
            records.append(Record(started - window_start, clock() - started, answer.status,
                                  answer.headers.get("Retry-After"), version, answer.error))
            return answer.status == 200 and answer.error is None

        cpu_start = cpu_seconds()
        t0 = clock()
        window_start = t0 + warmup
        window_end = window_start + duration
        started_file = Path(spec["started_file"])
        started_file.with_suffix(".tmp").write_text(repr(time.time()))
        started_file.with_suffix(".tmp").replace(started_file)  # whole or absent: the harness polls for it

        if mode == "closed":
            await closed_loop(one, int(spec["concurrency"]), lambda: clock() >= window_end,
                              float(spec.get("backoff_after_failure_s", 0)))
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
        client_cpu = cpu_seconds() - cpu_start
        if shared:
            await shared.unregister(client, spec["url"])
            shared.close()
        if grpc:
            await grpc.close()

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
