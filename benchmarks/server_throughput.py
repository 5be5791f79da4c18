"""How much of the engine's speed the server delivers, what one request costs on top, and what batching buys.

One run, in this order (the engine part first, with no server running):

  (a) engine only: `inferd.load` in this process; `predict` at batch 1 back-to-back, `predict` on a stacked
      batch of 8, `predict_batch` of 8 examples, and two threads each running batches of 4 on a model loaded
      with 2 streams (one single-threaded stream per core), each for ENGINE_S seconds; the best of these is
      the engine-only throughput the server is held to;
  (b) server, dynamic batching on (--max-batch-size 8 --max-queue-delay-ms 2): concurrency 8 with V2 binary
      FP32 tensors, then with JPEG files as V2 BYTES inputs (decoded and preprocessed by the server);
  (c) server with --max-queue-delay-ms 0 at concurrency 1: median latency minus the engine's median `predict`
      latency at batch 1 = what the HTTP server, codec and batcher add to one request;
  (d) concurrency 16 with --max-batch-size 1 (no batching), 8 and 16 (delay 2 ms): throughput, p50 and p99.

    .venv/bin/python benchmarks/server_throughput.py            # about 2.5 minutes
    .venv/bin/python benchmarks/server_throughput.py --scale 0.2 --out /tmp/smoke.json

Writes benchmarks/results/server_throughput.json and prints a summary.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _load as L

ENGINE_S = 10.0
SERVER_C8_S = 20.0
LATENCY_C1_S = 10.0
BATCHING_C16_S = 12.0
WARMUP_S = 2.0


def engine_phase(package: Path, tensors: list[Any], seconds: float) -> dict[str, Any]:
    import numpy as np

    import inferd

    model = inferd.load(package)
    feeds1 = [{"image": t} for t in tensors]
    stacked8 = np.ascontiguousarray(np.concatenate([tensors[i % len(tensors)] for i in range(8)]))
    examples8 = [{"image": tensors[i % len(tensors)]} for i in range(8)]

    def timed(call: Any, rows: int, threads: int = 1) -> dict[str, Any]:
        for i in range(5):
            call(i)
        latencies: list[float] = []
        meter = L.CpuMeter(os.getpid())
        started = time.perf_counter()

        def worker(first: int) -> None:
            i = first
            while time.perf_counter() - started < seconds:
                t = time.perf_counter()
                call(i)
                latencies.append(time.perf_counter() - t)
                i += threads

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        elapsed = time.perf_counter() - started
        cpu = meter.stop()
        cpu["process_cpu_s"] = cpu.pop("server_cpu_s")  # this process: the engine and its threads
        return {"rows_per_call": rows, "threads": threads, "calls": len(latencies),
                "images_per_s": round(rows * len(latencies) / elapsed, 3),
                "latency_ms": L.latency_summary(latencies), "cpu": cpu}

    result = {
        "load_info": model.load_info.as_dict(),
        "predict_batch1": timed(lambda i: model.predict(feeds1[i % len(feeds1)]), 1),
        "predict_batch8": timed(lambda i: model.predict({"image": stacked8}), 8),
        "predict_batch_8_examples": timed(lambda i: model.predict_batch(examples8), 8),
    }
    model.close()
    streams2 = inferd.load(package, streams=2)
    stacked4 = np.ascontiguousarray(stacked8[:4])
    result["load_info_streams2"] = streams2.load_info.as_dict()
    result["predict_batch4_2streams"] = timed(lambda i: streams2.predict({"image": stacked4}), 4, threads=2)
    streams2.close()
    return result  # the models go with this frame; gc.collect() in the caller frees their sessions


def main() -> None:
    parser = L.benchmark_parser(
        __doc__, "server_throughput.json", client="raw",
        client_help="the load generator's HTTP client; concurrency 8 binary is also run with aiohttp for reference")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's duration (smoke tests)")
    args, quiet = L.start_benchmark(parser)
    repository = args.package.parent
    scale = args.scale
    started = time.time()
    result: dict[str, Any] = {"benchmark": "server_throughput", "machine": L.machine_info(),
                              "package": str(args.package), "client": args.client,
                              "durations_s": {"engine": ENGINE_S * scale, "server_c8": SERVER_C8_S * scale,
                                              "latency_c1": LATENCY_C1_S * scale, "batching_c16": BATCHING_C16_S * scale,
                                              "warmup": WARMUP_S},
                              "machine_before_start": quiet}

    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp:
        work = Path(tmp)
        binary = L.write_payloads("binary", work / "payloads", args.package)
        jpeg = L.write_payloads("jpeg", work / "payloads", args.package)
        result["payloads"] = {"binary": [{k: p[k] for k in ("image", "bytes")} for p in binary],
                              "jpeg": [{k: p[k] for k in ("image", "bytes")} for p in jpeg]}

        # (a) engine only, no server running
        from inferd.io import preprocess_image
        from inferd.package import ModelPackage
        from inferd.types import ImageType

        spec = ModelPackage.load(args.package).manifest.inputs[0]
        assert isinstance(spec, ImageType)
        tensors = [preprocess_image(j, spec)[None] for j in L.photos_as_jpeg().values()]
        print("engine only ...", flush=True)
        engine = engine_phase(args.package, tensors, ENGINE_S * scale)
        gc.collect()
        result["engine"] = engine

        def load(server: L.Server, payloads: list[dict[str, Any]], concurrency: int, seconds: float,
                 client: str = args.client) -> dict[str, Any]:
            spec = L.closed_spec(f"{server.url}/v2/models/{L.MODEL}/infer", payloads, concurrency, seconds * scale,
                                 warmup_s=WARMUP_S, client=client)
            return L.run_load(spec, work, server)

        servers: dict[str, Any] = {}
        # (b) and (d, batch 8): dynamic batching on
        print("server --max-batch-size 8 --max-queue-delay-ms 2 ...", flush=True)
        with L.Server(repository, work, max_batch_size=8, max_queue_delay_ms=2) as server:
            servers["batch8_delay2"] = server.describe()
            result["server_c8_binary"] = load(server, binary, 8, SERVER_C8_S)
            result["server_c8_jpeg"] = load(server, jpeg, 8, SERVER_C8_S)
            if args.client != "aiohttp":
                result["server_c8_binary_aiohttp"] = load(server, binary, 8, SERVER_C8_S, client="aiohttp")
            c16_batch8 = load(server, binary, 16, BATCHING_C16_S)
        # (c) one request at a time, no batching delay
        print("server --max-queue-delay-ms 0, concurrency 1 ...", flush=True)
        with L.Server(repository, work, max_batch_size=8, max_queue_delay_ms=0) as server:
            servers["batch8_delay0"] = server.describe()
            result["server_c1_binary_delay0"] = load(server, binary, 1, LATENCY_C1_S)
        # (d) batching off, and batch 16
        print("server --max-batch-size 1, concurrency 16 ...", flush=True)
        with L.Server(repository, work, max_batch_size=1, max_queue_delay_ms=0) as server:
            servers["batch1"] = server.describe()
            c16_batch1 = load(server, binary, 16, BATCHING_C16_S)
        print("server --max-batch-size 16 --max-queue-delay-ms 2, concurrency 16 ...", flush=True)
        with L.Server(repository, work, max_batch_size=16, max_queue_delay_ms=2) as server:
            servers["batch16_delay2"] = server.describe()
            c16_batch16 = load(server, binary, 16, BATCHING_C16_S)
        result["servers"] = servers
        result["batching_c16"] = {"max_batch_size_1": c16_batch1, "max_batch_size_8": c16_batch8,
                                  "max_batch_size_16": c16_batch16}

    engine_best_name, engine_best = max(
        ((k, v["images_per_s"]) for k, v in engine.items() if k.startswith("predict")), key=lambda kv: kv[1])
    engine_b1_p50 = engine["predict_batch1"]["latency_ms"]["p50"]
    server_c1_p50 = result["server_c1_binary_delay0"]["latency_ms"]["p50"]
    t1 = c16_batch1["throughput_rps"]

    def c16(run: dict[str, Any]) -> dict[str, Any]:
        return {"throughput_rps": run["throughput_rps"], "p50_ms": run["latency_ms"]["p50"],
                "p99_ms": run["latency_ms"]["p99"], "mean_batch_size": run["batching"]["mean_batch_size"],
                "throughput_vs_batch1": round(run["throughput_rps"] / t1, 3) if t1 else None}

    result["summary"] = {
        "engine_best_images_per_s": engine_best, "engine_best_mode": engine_best_name,
        "engine_batch1_images_per_s": engine["predict_batch1"]["images_per_s"],
        "server_c8_binary_rps": result["server_c8_binary"]["throughput_rps"],
        "server_c8_jpeg_rps": result["server_c8_jpeg"]["throughput_rps"],
        "server_c8_binary_over_engine_best": round(result["server_c8_binary"]["throughput_rps"] / engine_best, 3),
        "server_c8_binary_aiohttp_over_engine_best": round(
            result.get("server_c8_binary_aiohttp", result["server_c8_binary"])["throughput_rps"] / engine_best, 3),
        "server_c8_jpeg_over_engine_best": round(result["server_c8_jpeg"]["throughput_rps"] / engine_best, 3),
        "engine_batch1_p50_ms": engine_b1_p50,
        "server_c1_p50_ms": server_c1_p50,
        "added_latency_p50_ms": round(server_c1_p50 - engine_b1_p50, 3),
        "batching_c16": {"max_batch_size_1": c16(c16_batch1), "max_batch_size_8": c16(c16_batch8),
                         "max_batch_size_16": c16(c16_batch16)},
        "client_cpu_ms_per_request_c8_binary": result["server_c8_binary"]["client_cpu_ms_per_request"],
        "failed_requests": sum(sum(r["errors"].values()) + sum(n for s, n in r["statuses"].items() if s != "200")
                               for r in (result["server_c8_binary"], result["server_c8_jpeg"],
                                         result["server_c1_binary_delay0"], c16_batch1, c16_batch8, c16_batch16)),
    }
    result["total_wall_s"] = round(time.time() - started, 1)
    result["loadavg_at_end"] = list(os.getloadavg())
    L.write_json(args.out, result)

    s = result["summary"]
    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; client {args.client}")
    print(f"engine only:   batch1 {engine['predict_batch1']['images_per_s']:.1f} img/s "
          f"(p50 {engine_b1_p50:.2f} ms), batch8 predict {engine['predict_batch8']['images_per_s']:.1f} img/s, "
          f"predict_batch(8) {engine['predict_batch_8_examples']['images_per_s']:.1f} img/s")
    for key, label in (("server_c8_binary", "binary"), ("server_c8_jpeg", "jpeg")):
        run = result[key]
        print(f"server c8 {label:6s}: {run['throughput_rps']:.1f} req/s = "
              f"{run['throughput_rps'] / engine_best:.2f}x engine best; p50 {run['latency_ms']['p50']:.1f} ms, "
              f"p99 {run['latency_ms']['p99']:.1f} ms; mean batch {run['batching']['mean_batch_size']}; "
              f"cpu server {run['cpu']['server_cpu_s']:.1f} s, client {run['cpu']['client_cpu_s']:.1f} s, "
              f"other {run['cpu']['other_processes_cpu_s']:.1f} s over {run['cpu']['wall_s']:.0f} s")
    print(f"added latency (c1, delay 0): server p50 {server_c1_p50:.2f} ms - engine p50 {engine_b1_p50:.2f} ms "
          f"= {s['added_latency_p50_ms']:.2f} ms")
    for name, row in s["batching_c16"].items():
        print(f"c16 {name:18s}: {row['throughput_rps']:.1f} req/s ({row['throughput_vs_batch1']}x), "
              f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, mean batch {row['mean_batch_size']}")
    print(f"non-200 or failed requests: {s['failed_requests']}; wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
