"""Overload: does the server shed load cleanly, keep its deadlines and its memory, when offered 4x its capacity?

The server runs with a small queue and a short deadline (--max-queue-size 8 --timeout 2, batching 8 / 2 ms).
The script first measures capacity (closed loop, concurrency 8, binary V2 requests), then drives an open loop at
RATE_FACTOR x that capacity for LOAD_S seconds: requests leave at a fixed rate whatever the answers, with at most
MAX_OUTSTANDING in flight (sends beyond that cap are skipped and counted). Every request's status, latency and
Retry-After header are recorded, and the server's RSS is sampled every 0.5 s.

Acceptance, recorded in the result's "acceptance" block:
  * every 200 finished within its deadline: latency <= --timeout + DEADLINE_MARGIN_S (the deadline bounds the
    time in the queue; the margin covers one batch's compute and the transfer);
  * every other answer is a 429 or 503 carrying Retry-After; no other 5xx (504 counted apart), no dropped
    connection or client timeout;
  * the server's peak RSS during the load is less than 10 % above its RSS when the load started.

    .venv/bin/python benchmarks/overload.py                 # about 1 minute
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P

QUEUE_SIZE = 8
TIMEOUT_S = 2.0
DEADLINE_MARGIN_S = 0.5
RATE_FACTOR = 4.0
LOAD_S = 30.0
CAPACITY_S = 8.0
MAX_OUTSTANDING = 256
RSS_LIMIT = 0.10


def main() -> None:
    parser = H.benchmark_parser(__doc__, "overload.json")
    parser.add_argument("--duration", type=float, default=LOAD_S)
    parser.add_argument("--factor", type=float, default=RATE_FACTOR, help="offered rate / measured capacity")
    parser.add_argument("--max-outstanding", type=int, default=MAX_OUTSTANDING, help="client cap on requests in flight")
    args, quiet = H.start_benchmark(parser)
    started = time.time()
    flags = {"max_batch_size": 8, "max_queue_delay_ms": 2, "max_queue_size": QUEUE_SIZE, "timeout": TIMEOUT_S}
    result: dict[str, Any] = {
        "benchmark": "overload", "machine": H.machine_info(), "machine_before_start": quiet, "client": args.client,
        "config": {"server_flags": flags, "rate_factor": args.factor, "duration_s": args.duration,
                   "max_outstanding": args.max_outstanding, "deadline_margin_s": DEADLINE_MARGIN_S,
                   "rss_growth_limit": RSS_LIMIT, "payload": "V2 binary FP32 [1,3,224,224]"},
    }
    with tempfile.TemporaryDirectory(prefix="inferd-overload-") as tmp:
        work = Path(tmp)
        payloads = P.write_payloads("binary", work / "payloads", args.package)
        with H.Server(args.package.parent, work, **flags) as server:
            result["server"] = server.describe()
            url = f"{server.url}/v2/models/{H.MODEL}/infer"
            rss_after_start = H.process_rss_bytes(server.pid)
            print("measuring capacity (closed loop, concurrency 8) ...", flush=True)
            capacity = H.run_load(H.closed_spec(url, payloads, 8, CAPACITY_S, client=args.client), work, server)
            result["capacity"] = capacity
            capacity_rps = capacity["throughput_rps"]
            rate = round(args.factor * capacity_rps, 1)
            print(f"capacity {capacity_rps:.1f} req/s; offering {rate:.1f} req/s for {args.duration:.0f} s ...", flush=True)

            rss_after_capacity = H.process_rss_bytes(server.pid)
            spec = {"url": url, "payloads": payloads, "mode": "open", "rate": rate, "duration_s": args.duration,
                    "warmup_s": 0, "max_outstanding": args.max_outstanding, "request_timeout_s": 30, "records": True,
                    "client": args.client}
            before = server.model_stats()
            run = H.LoadRun(spec, work)
            run.wait_started()
            rss0 = H.process_rss_bytes(server.pid)
            t_start = time.monotonic()
            meter = H.CpuMeter(server.pid)
            samples: list[tuple[float, int]] = []

            def sample() -> None:
                samples.append((round(time.monotonic() - t_start, 2), H.process_rss_bytes(server.pid)))

            load = run.wait(tick=sample, every_s=0.5)
            sample()
            load["cpu"] = meter.stop(load["client_cpu_s"])
            load["batching"] = H.stats_delta(before, server.model_stats())
            time.sleep(3)
            rss_settled = H.process_rss_bytes(server.pid)
            status, _, body = _probe(url, payloads[0])
            alive = server.process is not None and server.process.poll() is None
            server_log_tail = server.log_tail(15)

    records = G.take_records(load)
    result["load"] = load
    result["analysis"] = analyse(records, args.duration)
    peak = max(rss for _, rss in samples)
    result["rss"] = {
        "after_startup_bytes": rss_after_start, "after_capacity_run_bytes": rss_after_capacity,
        "at_load_start_bytes": rss0, "peak_bytes": peak,
        "settled_3s_after_bytes": rss_settled, "peak_growth": round(peak / rss0 - 1, 4),
        "samples_every_0_5s": samples,
    }
    result["after_load"] = {"probe_status": status, "probe_body": body[:200].decode(errors="replace"),
                            "server_alive": alive, "server_log_tail": server_log_tail}
    a = result["analysis"]
    result["acceptance"] = {
        "all_200_within_deadline": a["ok_over_deadline"] == 0,
        "all_rejections_429_or_503_with_retry_after": a["rejected_without_retry_after"] == 0 and a["other"] == {},
        "zero_5xx_other_than_503": a["status_5xx_other_than_503"] == 0,
        "zero_connection_errors": a["client_errors"] == {},
        "rss_peak_growth_below_10_percent": result["rss"]["peak_growth"] < RSS_LIMIT,
        "server_still_serves": status == 200 and alive,
    }
    H.finish(args.out, result, records, started)

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; client {args.client}")
    print(f"offered {rate:.1f} req/s ({args.factor:g}x capacity {capacity_rps:.1f}) for {args.duration:.0f} s: "
          f"sent {a['sent']}, skipped at the {args.max_outstanding} cap {load['skipped_at_cap']}")
    print(f"  200: {a['ok']} ({a['goodput_rps']:.1f} req/s = {a['goodput_rps'] / capacity_rps:.2f}x capacity), "
          f"latency p50 {a['ok_latency_ms']['p50']} ms, p99 {a['ok_latency_ms']['p99']} ms, "
          f"max {a['ok_latency_ms']['max']} ms; over the deadline: {a['ok_over_deadline']}")
    print(f"  rejected: {a['rejected']} (by status {a['rejected_by_status']}), without Retry-After "
          f"{a['rejected_without_retry_after']}; rejection latency p50 {a['rejected_latency_ms']['p50']} ms, "
          f"max {a['rejected_latency_ms']['max']} ms")
    print(f"  other statuses {a['other']}, client errors {a['client_errors']}")
    print(f"  server RSS at load start {rss0 / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
          f"({result['rss']['peak_growth']:+.1%}), 3 s after {rss_settled / 2**20:.1f} MiB")
    print(f"  cpu: server {load['cpu']['server_cpu_s']:.1f} s, client {load['cpu']['client_cpu_s']:.1f} s, "
          f"other processes {load['cpu']['other_processes_cpu_s']:.1f} s over {load['cpu']['wall_s']:.0f} s")
    print(f"acceptance: {json.dumps(result['acceptance'])}")
    print(f"wrote {args.out} in {result['total_wall_s']} s")


def _probe(url: str, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """One request after the load: the server must still answer 200."""
    return H.http("POST", url, Path(payload["path"]).read_bytes(),
                  headers={G.INFERENCE_HEADER: str(payload["header_length"])}, timeout=30)


def analyse(records: list[G.Record], duration: float) -> dict[str, Any]:
    limit = TIMEOUT_S + DEADLINE_MARGIN_S
    ok = [r for r in records if r.ok]
    rejected = [r for r in records if r.status in (429, 503) and r.client_error is None]
    errored = [r for r in records if r.client_error is not None]
    other = G.tally([r for r in records if r.client_error is None and r.status not in (200, 429, 503)], lambda r: r.status)
    client_errors = G.tally(errored, lambda r: r.client_error)
    by_status = G.tally(rejected, lambda r: r.status)
    seconds: dict[int, list[G.Record]] = {}
    for r in records:
        seconds.setdefault(int(r.start_s), []).append(r)
    per_second = {k: G.tally(v, lambda r: "error" if r.client_error is not None else r.status) for k, v in seconds.items()}
    return {
        "sent": len(records), "ok": len(ok), "rejected": len(rejected), "rejected_by_status": by_status,
        "rejected_without_retry_after": sum(1 for r in rejected if not r.retry_after),
        "retry_after_values": sorted({r.retry_after for r in rejected if r.retry_after}),
        "other": other, "client_errors": client_errors,
        "status_5xx_other_than_503": sum(n for s, n in other.items() if s.startswith("5")),
        "goodput_rps": round(sum(1 for r in ok if r.start_s + r.latency_s <= duration) / duration, 3),
        "ok_latency_ms": G.latency_summary([r.latency_s for r in ok]),
        "ok_over_deadline": sum(1 for r in ok if r.latency_s > limit), "deadline_limit_s": limit,
        "rejected_latency_ms": G.latency_summary([r.latency_s for r in rejected]),
        "per_second": [per_second[k] for k in sorted(per_second)],
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
