"""How much of the engine's speed the server delivers, what one request costs on top, and what batching buys.

The comparisons that carry the targets are measured in alternating blocks (engine only, then server, and
again, ROUNDS times), because this machine drifts: the engine alone's batch 1 p50 moves by a quarter between
runs of one day (results/server_throughput.json, "notes"). Phases measured one after the other would credit or
blame the server for that.

  (a) engine-only survey: `inferd.load` in this process, every mode for SURVEY_S seconds. On tensors:
      `predict` at batch 1, on a stacked batch of 8, `predict_batch` of 8 examples, and two threads each
      running batches of 4 on a model loaded with 2 streams (one single-threaded stream per core). On JPEG
      files, the work the server does for a JPEG (`inferd.io.preprocess_image`, then `predict`): batch 1,
      8 decoded then run as one batch, and two threads each decoding and running batches of 4 on the
      2-stream model. The fastest tensor mode and the fastest JPEG mode are what the server is held to.
  (b) throughput, concurrency 8, on the throughput layout (--instances 2 --max-batch-size 2
      --max-queue-delay-ms 0: one single-threaded instance per core, as the engine's fastest mode): binary
      V2 FP32 tensors against the fastest tensor mode, JPEG files as V2 BYTES (decoded by the server)
      against the fastest JPEG mode, interleaved; then concurrency 8 binary with aiohttp, for reference;
      then tensors in Triton system shared memory (the client copies each tensor into its region and the
      logits out), then tensors over gRPC (tritonclient.grpc.aio, raw contents). Then binary and JPEG
      again on the default layout (one two-threaded instance, --max-batch-size 8 --max-queue-delay-ms 2).
  (c) added latency, server with --max-queue-delay-ms 0, concurrency 1: server median minus engine median at
      batch 1 for the same input, binary against tensors and JPEG against JPEG, interleaved; then shared
      memory and gRPC against tensors.
  (d) batching gain on the default layout: concurrency 16 with --max-batch-size 1 (no batching), 8 (the
      default) and 16.

    .venv/bin/python benchmarks/server_throughput.py            # about 7 minutes
    .venv/bin/python benchmarks/server_throughput.py --scale 0.2 --out /tmp/smoke.json

Writes benchmarks/results/server_throughput.json and prints a summary.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P

SURVEY_S = 6.0
ROUNDS = 4
THROUGHPUT_BLOCK_S = 4.0
LATENCY_BLOCK_S = 2.5
REFERENCE_S = 10.0
BATCHING_C16_S = 12.0
WARMUP_S = 1.0


class Engine:
    """The engine-only side, in this process: the model as `inferd.load` gives it, the same with 2 streams,
    and the ways of calling them that the server is compared with."""

    def __init__(self, package: Path, jpegs: list[bytes]) -> None:
        import numpy as np

        import inferd
        from inferd.io import preprocess_image
        from inferd.types import ImageType

        self.model = inferd.load(package)
        self.streams2 = inferd.load(package, streams=2)
        spec = self.model.manifest.inputs[0]
        assert isinstance(spec, ImageType), "the benchmark needs a model whose input is an image"
        tensors = [preprocess_image(j, spec)[None] for j in jpegs]
        stacked8 = np.ascontiguousarray(np.concatenate([tensors[i % len(tensors)] for i in range(8)]))
        stacked4 = np.ascontiguousarray(stacked8[:4])
        examples8 = [{"image": tensors[i % len(tensors)]} for i in range(8)]

        def decoded(first: int, rows: int) -> dict[str, Any]:
            return {"image": np.stack([preprocess_image(jpegs[(first + k) % len(jpegs)], spec) for k in range(rows)])}

        model, streams2 = self.model, self.streams2
        # name -> (call with a running index, images per call, threads calling at once)
        self.modes: dict[str, tuple[Callable[[int], Any], int, int]] = {
            "predict_batch1": (lambda i: model.predict({"image": tensors[i % len(tensors)]}), 1, 1),
            "predict_batch8": (lambda i: model.predict({"image": stacked8}), 8, 1),
            "predict_batch_8_examples": (lambda i: model.predict_batch(examples8), 8, 1),
            "predict_batch4_2streams": (lambda i: streams2.predict({"image": stacked4}), 4, 2),
            "jpeg_batch1": (lambda i: model.predict(decoded(i, 1)), 1, 1),
            "jpeg_batch8": (lambda i: model.predict(decoded(i, 8)), 8, 1),
            "jpeg_batch4_2streams": (lambda i: streams2.predict(decoded(i, 4)), 4, 2),
        }

    def load_info(self) -> dict[str, Any]:
        return {"default": self.model.load_info.as_dict(), "streams2": self.streams2.load_info.as_dict()}

    def run(self, mode: str, seconds: float) -> dict[str, Any]:
        """Call `mode` back-to-back for `seconds` (after 5 warm-up calls); images/s, latencies and CPU."""
        call, rows, threads = self.modes[mode]
        for i in range(5):
            call(i)
        latencies: list[float] = []
        meter = H.CpuMeter(os.getpid())
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
        return {"mode": mode, "rows_per_call": rows, "threads": threads, "calls": len(latencies),
                "images_per_s": round(rows * len(latencies) / elapsed, 3), "latencies_s": latencies, "cpu": cpu}

    def close(self) -> None:
        self.model.close()
        self.streams2.close()


def summarized(run: dict[str, Any]) -> dict[str, Any]:
    """An engine run for the JSON: latency percentiles instead of every latency."""
    return {k: v for k, v in run.items() if k != "latencies_s"} | {"latency_ms": G.latency_summary(run["latencies_s"])}


def interleaved(engine: Engine, mode: str, server: H.Server, payloads: list[dict[str, Any]], concurrency: int,
                block_s: float, rounds: int, work: Path, client: str, transport: str = "http") -> dict[str, Any]:
    """Engine-only `mode` and the server at `concurrency` in alternating blocks of `block_s` seconds.

    Throughputs are the mean over blocks (all blocks are equally long); latency percentiles pool every block.
    `transport` "shared_memory" puts each tensor in a registered region; "grpc" sends it with tritonclient.grpc.
    """
    extras: dict[str, dict[str, Any]] = {
        "http": {}, "shared_memory": {"shared_memory": True},
        "grpc": {"grpc_address": f"{H.HOST}:{server.flags.get('grpc_port')}", "model": H.MODEL},
    }
    extra = extras[transport]
    engine_runs, server_runs = [], []
    for _ in range(rounds):
        engine_runs.append(engine.run(mode, block_s))
        spec = H.closed_spec(f"{server.url}/v2/models/{H.MODEL}/infer", payloads, concurrency, block_s,
                             warmup_s=WARMUP_S, client=client, records=True, **extra)
        server_runs.append(H.run_load(spec, work, server))
    engine_latencies = [s for run in engine_runs for s in run["latencies_s"]]
    server_latencies = [r.latency_s for run in server_runs for r in G.take_records(run)
                        if 0 <= r.start_s < block_s and r.ok]
    engine_rate = sum(run["images_per_s"] for run in engine_runs) / rounds
    server_rate = sum(run["throughput_rps"] for run in server_runs) / rounds
    engine_p50 = G.latency_summary(engine_latencies)["p50"]
    server_p50 = G.latency_summary(server_latencies)["p50"]
    return {
        "engine_mode": mode, "concurrency": concurrency, "rounds": rounds, "block_s": block_s,
        "engine_images_per_s": round(engine_rate, 3), "server_rps": round(server_rate, 3),
        "server_over_engine": round(server_rate / engine_rate, 3),
        "engine_latency_ms": G.latency_summary(engine_latencies),
        "server_latency_ms": G.latency_summary(server_latencies),
        "added_latency_p50_ms": round(server_p50 - engine_p50, 3) if server_p50 and engine_p50 else None,
        "blocks": [{"engine_images_per_s": e["images_per_s"], "server_rps": s["throughput_rps"],
                    "server_p50_ms": s["latency_ms"]["p50"], "statuses": s["statuses"], "errors": s["errors"],
                    "batching": s["batching"], "cpu": s["cpu"],
                    "client_cpu_ms_per_request": s["client_cpu_ms_per_request"]}
                   for e, s in zip(engine_runs, server_runs, strict=True)],
    }


def failures(run: dict[str, Any]) -> int:
    blocks = run.get("blocks", [run])
    return sum(sum(b["errors"].values()) + sum(n for s, n in b["statuses"].items() if s != "200") for b in blocks)


def main() -> None:
    parser = H.benchmark_parser(
        __doc__, "server_throughput.json", client="raw",
        client_help="the load generator's HTTP client; concurrency 8 binary is also run with aiohttp for reference")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's duration (smoke tests)")
    args, quiet = H.start_benchmark(parser)
    repository = args.package.parent
    scale = args.scale
    started = time.time()
    result: dict[str, Any] = {"benchmark": "server_throughput", "machine": H.machine_info(),
                              "package": str(args.package), "client": args.client,
                              "durations_s": {"survey": SURVEY_S * scale, "rounds": ROUNDS,
                                              "throughput_block": THROUGHPUT_BLOCK_S * scale,
                                              "latency_block": LATENCY_BLOCK_S * scale,
                                              "reference": REFERENCE_S * scale, "batching_c16": BATCHING_C16_S * scale,
                                              "server_warmup_per_block": WARMUP_S},
                              "machine_before_start": quiet}

    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp:
        work = Path(tmp)
        binary = P.write_payloads("binary", work / "payloads", args.package)
        jpeg = P.write_payloads("jpeg", work / "payloads", args.package)
        tensors = P.write_payloads("tensor", work / "payloads", args.package)
        result["payloads"] = {kind: [{k: p[k] for k in ("image", "bytes")} for p in payloads]
                              for kind, payloads in (("binary", binary), ("jpeg", jpeg), ("tensor", tensors))}

        print("(a) engine only ...", flush=True)
        engine = Engine(args.package, list(P.photos_as_jpeg().values()))
        survey = {mode: summarized(engine.run(mode, SURVEY_S * scale)) for mode in engine.modes}
        result["engine"] = {"load_info": engine.load_info(), "survey": survey}

        def fastest(prefix: str) -> str:
            return max((m for m in survey if m.startswith(prefix)), key=lambda m: survey[m]["images_per_s"])

        best_tensor, best_jpeg = fastest("predict"), fastest("jpeg")

        def load(server: H.Server, payloads: list[dict[str, Any]], concurrency: int, seconds: float,
                 client: str = args.client) -> dict[str, Any]:
            spec = H.closed_spec(f"{server.url}/v2/models/{H.MODEL}/infer", payloads, concurrency, seconds * scale,
                                 warmup_s=2.0, client=client)
            return H.run_load(spec, work, server)

        def rounds(mode: str, server: H.Server, payloads: list[dict[str, Any]], concurrency: int,
                   block_s: float, transport: str = "http") -> dict[str, Any]:
            return interleaved(engine, mode, server, payloads, concurrency, block_s * scale, ROUNDS, work, args.client,
                               transport)

        servers: dict[str, Any] = {}
        print(f"(b) concurrency 8 against {best_tensor} and {best_jpeg}, interleaved ...", flush=True)
        with H.Server(repository, work, instances=2, max_batch_size=2, max_queue_delay_ms=0,
                      allow_shared_memory=True, grpc_port=H.free_port()) as server:
            servers["instances2_batch2_delay0"] = server.describe()
            result["c8_binary"] = rounds(best_tensor, server, binary, 8, THROUGHPUT_BLOCK_S)
            result["c8_jpeg"] = rounds(best_jpeg, server, jpeg, 8, THROUGHPUT_BLOCK_S)
            if args.client != "aiohttp":
                result["c8_binary_aiohttp"] = load(server, binary, 8, REFERENCE_S, client="aiohttp")
            result["c8_shared_memory"] = rounds(best_tensor, server, tensors, 8, THROUGHPUT_BLOCK_S, "shared_memory")
            result["c8_grpc"] = rounds(best_tensor, server, tensors, 8, THROUGHPUT_BLOCK_S, "grpc")
        with H.Server(repository, work, max_batch_size=8, max_queue_delay_ms=2) as server:
            servers["batch8_delay2"] = server.describe()
            result["c8_binary_default_layout"] = rounds(best_tensor, server, binary, 8, THROUGHPUT_BLOCK_S)
            result["c8_jpeg_default_layout"] = rounds(best_jpeg, server, jpeg, 8, THROUGHPUT_BLOCK_S)
            c16_batch8 = load(server, binary, 16, BATCHING_C16_S)
        print("(c) concurrency 1 against batch 1, interleaved ...", flush=True)
        with H.Server(repository, work, max_batch_size=8, max_queue_delay_ms=0, allow_shared_memory=True,
                      grpc_port=H.free_port()) as server:
            servers["batch8_delay0"] = server.describe()
            result["c1_binary"] = rounds("predict_batch1", server, binary, 1, LATENCY_BLOCK_S)
            result["c1_jpeg"] = rounds("jpeg_batch1", server, jpeg, 1, LATENCY_BLOCK_S)
            result["c1_shared_memory"] = rounds("predict_batch1", server, tensors, 1, LATENCY_BLOCK_S, "shared_memory")
            result["c1_grpc"] = rounds("predict_batch1", server, tensors, 1, LATENCY_BLOCK_S, "grpc")
        engine.close()
        print("(d) concurrency 16 with batching off, and at batch 16 ...", flush=True)
        with H.Server(repository, work, max_batch_size=1, max_queue_delay_ms=0) as server:
            servers["batch1"] = server.describe()
            c16_batch1 = load(server, binary, 16, BATCHING_C16_S)
        with H.Server(repository, work, max_batch_size=16, max_queue_delay_ms=2) as server:
            servers["batch16_delay2"] = server.describe()
            c16_batch16 = load(server, binary, 16, BATCHING_C16_S)
        result["servers"] = servers
        result["batching_c16"] = {"max_batch_size_1": c16_batch1, "max_batch_size_8": c16_batch8,
                                  "max_batch_size_16": c16_batch16}

    t1 = c16_batch1["throughput_rps"]

    def c16(run: dict[str, Any]) -> dict[str, Any]:
        return {"throughput_rps": run["throughput_rps"], "p50_ms": run["latency_ms"]["p50"],
                "p99_ms": run["latency_ms"]["p99"], "mean_batch_size": run["batching"]["mean_batch_size"],
                "throughput_vs_batch1": round(run["throughput_rps"] / t1, 3) if t1 else None}

    def throughput(run: dict[str, Any]) -> dict[str, Any]:
        return {k: run[k] for k in ("engine_mode", "engine_images_per_s", "server_rps", "server_over_engine")}

    def latency(run: dict[str, Any]) -> dict[str, Any]:
        return {"engine_p50_ms": run["engine_latency_ms"]["p50"], "server_p50_ms": run["server_latency_ms"]["p50"],
                "added_latency_p50_ms": run["added_latency_p50_ms"]}

    reference = result.get("c8_binary_aiohttp")
    result["summary"] = {
        "c8_binary": throughput(result["c8_binary"]),
        "c8_jpeg": throughput(result["c8_jpeg"]),
        "c8_shared_memory": throughput(result["c8_shared_memory"]),
        "c8_grpc": throughput(result["c8_grpc"]),
        "c8_binary_default_layout": throughput(result["c8_binary_default_layout"]),
        "c8_jpeg_default_layout": throughput(result["c8_jpeg_default_layout"]),
        "c8_binary_aiohttp_rps": reference["throughput_rps"] if reference else None,
        "c1_binary": latency(result["c1_binary"]),
        "c1_jpeg": latency(result["c1_jpeg"]),
        "c1_shared_memory": latency(result["c1_shared_memory"]),
        "c1_grpc": latency(result["c1_grpc"]),
        "batching_c16": {name: c16(run) for name, run in result["batching_c16"].items()},
        "engine_survey_images_per_s": {mode: run["images_per_s"] for mode, run in survey.items()},
        "failed_requests": sum(failures(run) for run in (
            result["c8_binary"], result["c8_jpeg"], result["c8_shared_memory"], result["c8_grpc"],
            result["c8_binary_default_layout"], result["c8_jpeg_default_layout"],
            result["c1_binary"], result["c1_jpeg"], result["c1_shared_memory"], result["c1_grpc"],
            *([reference] if reference else []), c16_batch1, c16_batch8, c16_batch16)),
    }
    result["total_wall_s"] = round(time.time() - started, 1)
    result["loadavg_at_end"] = list(os.getloadavg())
    H.write_json(args.out, result)

    s = result["summary"]
    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; client {args.client}")
    print("engine survey (img/s): " + ", ".join(f"{m} {r}" for m, r in s["engine_survey_images_per_s"].items()))
    for key in ("c8_binary", "c8_jpeg", "c8_shared_memory", "c8_grpc", "c8_binary_default_layout",
                "c8_jpeg_default_layout"):
        row = s[key]
        print(f"{key:24s}: server {row['server_rps']:.1f} req/s vs {row['engine_mode']} "
              f"{row['engine_images_per_s']:.1f} img/s = {row['server_over_engine']:.3f}x (interleaved)")
    if reference:
        print(f"c8 binary with aiohttp: {reference['throughput_rps']:.1f} req/s")
    for key in ("c1_binary", "c1_jpeg", "c1_shared_memory", "c1_grpc"):
        row = s[key]
        print(f"{key:16s}: server p50 {row['server_p50_ms']:.2f} ms - engine p50 {row['engine_p50_ms']:.2f} ms "
              f"= {row['added_latency_p50_ms']:.2f} ms added (interleaved)")
    for name, row in s["batching_c16"].items():
        print(f"c16 {name:18s}: {row['throughput_rps']:.1f} req/s ({row['throughput_vs_batch1']}x), "
              f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, mean batch {row['mean_batch_size']}")
    print(f"non-200 or failed requests: {s['failed_requests']}; wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
