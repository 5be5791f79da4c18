"""Unload, reload and version swaps under constant traffic: no request the server accepted may fail.

A copy of the default package is put in a temporary repository as `efficientnet-lite0/1/` and served
(batching 8 / 2 ms). A closed loop of CONCURRENCY workers sends V2 binary requests back-to-back for DURATION_S
seconds while this script, on a schedule:

  * unloads and reloads the model CYCLES times (POST /v2/repository/models/efficientnet-lite0/unload, then /load);
  * copies version 1 to a new version `2/` and calls load, which swaps version 2 in as the default.

Every request's status, latency and answering model version are recorded. Acceptance ("zero failed requests that
were accepted"): every answer that is not 200 is a 503 or 404, i.e. refused up front while the model was unloading
or unloaded; no other status (no 500, no 504), no dropped connection, no client timeout. Also recorded: how many
were served and refused, the maximum latency, and whether any request that started after the swap returned was
still answered by version 1.

    .venv/bin/python benchmarks/swap_under_traffic.py       # about 35 seconds
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P

CONCURRENCY = 4
DURATION_S = 30.0
CYCLES = 3
# seconds after the traffic starts: (unload at, load at) per cycle, then the version swap
SCHEDULE = [(4.0, 6.0), (10.0, 12.0), (16.0, 18.0)]
SWAP_AT = 22.0
BACKOFF_S = 0.02  # a worker whose request was refused waits this long before the next, instead of spinning


def main() -> None:
    args, quiet = H.start_benchmark(H.benchmark_parser(__doc__, "swap_under_traffic.json"))
    started = time.time()
    flags = {"max_batch_size": 8, "max_queue_delay_ms": 2}
    result: dict[str, Any] = {
        "benchmark": "swap_under_traffic", "machine": H.machine_info(), "machine_before_start": quiet,
        "client": args.client,
        "config": {"server_flags": flags, "concurrency": CONCURRENCY, "duration_s": DURATION_S,
                   "unload_load_schedule_s": SCHEDULE, "version_swap_at_s": SWAP_AT,
                   "worker_backoff_after_refusal_s": BACKOFF_S,
                   "payload": "V2 binary FP32 [1,3,224,224]"},
    }
    with tempfile.TemporaryDirectory(prefix="inferd-swap-") as tmp:
        work = Path(tmp)
        repository = work / "repo"
        model_dir = repository / H.MODEL
        shutil.copytree(args.package, model_dir / "1")
        payloads = P.write_payloads("binary", work / "payloads", args.package)
        with H.Server(repository, work, **flags) as server:
            result["server"] = server.describe()
            base = f"{server.url}/v2/repository/models/{H.MODEL}"
            spec = {"url": f"{server.url}/v2/models/{H.MODEL}/infer", "payloads": payloads, "mode": "closed",
                    "concurrency": CONCURRENCY, "duration_s": DURATION_S, "warmup_s": 0, "request_timeout_s": 60,
                    "records": True, "parse_version": True, "client": args.client,
                    "backoff_after_failure_s": BACKOFF_S}
            run = H.LoadRun(spec, work)
            t0 = run.wait_started()  # the generator's time zero (time.time()), so actions and records align
            meter = H.CpuMeter(server.pid)
            actions: list[dict[str, Any]] = []

            def act(name: str, at: float, call: str, prepare: Any = None) -> None:
                time.sleep(max(0.0, at - (time.time() - t0)))
                begin = time.time() - t0
                if prepare is not None:
                    prepare()
                status, _, body = H.http("POST", f"{base}/{call}", b"", timeout=120)
                actions.append({"action": name, "start_s": round(begin, 3),
                                "end_s": round(time.time() - t0, 3), "status": status,
                                "response": body[:300].decode(errors="replace")})

            def schedule() -> None:
                for unload_at, load_at in SCHEDULE[:CYCLES]:
                    act("unload", unload_at, "unload")
                    act("load", load_at, "load")
                act("add version 2 and load (swap)", SWAP_AT, "load",
                    prepare=lambda: shutil.copytree(model_dir / "1", model_dir / "2"))

            controller = threading.Thread(target=schedule, daemon=True)
            controller.start()
            load = run.wait()
            controller.join(timeout=120)
            load["cpu"] = meter.stop(load["client_cpu_s"])
            result["after"] = {"model": server.get_json(f"/v2/models/{H.MODEL}"),
                               "index": json.loads(H.http("POST", f"{server.url}/v2/repository/index", b"")[2]),
                               "server_alive": server.process is not None and server.process.poll() is None,
                               "server_log_tail": server.log_tail(25)}

    records = G.take_records(load)
    result["load"] = load
    result["actions"] = actions
    result["analysis"] = analyse(records, actions)
    a = result["analysis"]
    result["acceptance"] = {
        "non_200_only_503_or_404": a["other_statuses"] == {},
        "no_client_errors": a["client_errors"] == {},
        "control_calls_succeeded": all(x["status"] == 200 for x in actions),
        "version_2_serves_after_swap": a["served_by_version"].get("2", 0) > 0,
        "no_version_1_answer_started_after_swap": a["v1_answers_started_after_swap"] == 0,
    }
    H.finish(args.out, result, records, started)

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; client {args.client}")
    for x in actions:
        print(f"  {x['start_s']:6.2f}-{x['end_s']:6.2f} s  {x['action']:30s} -> {x['status']}")
    print(f"requests: {a['sent']}; served {a['served']} (by version {a['served_by_version']}), "
          f"refused {a['refused']} (by status {a['refused_by_status']}); other statuses {a['other_statuses']}, "
          f"client errors {a['client_errors']}")
    print(f"200 latency p50 {a['ok_latency_ms']['p50']} ms, p99 {a['ok_latency_ms']['p99']} ms, "
          f"max {a['ok_latency_ms']['max']} ms; max latency of any answer {a['max_latency_ms']} ms")
    print(f"acceptance: {json.dumps(result['acceptance'])}")
    print(f"wrote {args.out} in {result['total_wall_s']} s")


def analyse(records: list[G.Record], actions: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    refused = [r for r in records if r.status in (503, 404) and r.client_error is None]
    other = G.tally([r for r in records if r.client_error is None and r.status not in (200, 503, 404)], lambda r: r.status)
    errors = G.tally([r for r in records if r.client_error is not None], lambda r: r.client_error)
    versions = G.tally(ok, lambda r: r.version)
    refused_by = G.tally(refused, lambda r: r.status)
    swap_done = next((x["end_s"] for x in actions if "swap" in x["action"]), None)
    # Between consecutive control calls: what the traffic saw in each stretch.
    marks = sorted({0.0, *(x["start_s"] for x in actions), *(x["end_s"] for x in actions)})
    labels = {}
    for x in actions:
        labels[x["start_s"]] = f"during {x['action']}"
        labels[x["end_s"]] = f"after {x['action']}"
    segments = []
    for i, begin in enumerate(marks):
        end = marks[i + 1] if i + 1 < len(marks) else float("inf")
        counts = G.tally([r for r in records if begin <= r.start_s < end], lambda r: r.client_error or r.status)
        segments.append({"from_s": begin, "to_s": None if end == float("inf") else end,
                         "what": labels.get(begin, "start"), "requests_started": counts})
    return {
        "sent": len(records), "served": len(ok), "refused": len(refused), "refused_by_status": refused_by,
        "refused_with_retry_after": sum(1 for r in refused if r.retry_after),
        "other_statuses": other, "client_errors": errors, "served_by_version": versions,
        "v1_answers_started_after_swap": sum(1 for r in ok if swap_done is not None and r.start_s > swap_done
                                             and str(r.version) == "1"),
        "ok_latency_ms": G.latency_summary([r.latency_s for r in ok]),
        "max_latency_ms": round(max((r.latency_s for r in records), default=0) * 1000, 3),
        "segments": segments,
    }


if __name__ == "__main__":
    main()
