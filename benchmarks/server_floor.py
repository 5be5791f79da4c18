"""The floor under issue 3's speed targets: what a Python HTTP server can deliver on this machine at best.

`server_throughput.py` measures `inferd serve` as shipped. This script measures two stand-ins, each a bare
ASGI function that this script serves with uvicorn (uvloop and httptools, as `inferd serve` runs):

* **echo**: reads the 600 KB binary V2 body and answers the 4,000 bytes of a V2 logits response, with no
  model at all: what HTTP/1.1 alone costs per request here (server CPU per request, round trip at
  concurrency 1).
* **minimal**: inferd's V2 codec, dynamic batcher and model behind one function: no routing, middleware,
  API key, body limits, request ids, access log, metrics or error handling. What is left is what no
  server can leave out: read the body, decode it, batch, run, encode, answer.

The minimal server is held to the targets exactly as `server_throughput.py` holds `inferd serve`, in
alternating blocks against the engine alone: at concurrency 8 on the throughput layout (2 single-threaded
instances, max batch 2, no delay) against the fastest tensor mode, and at concurrency 1 on the latency
layout (one instance on both cores, no delay) against `predict` at batch 1. If the minimal server misses a
target, no server written in Python on this machine meets it.

    .venv/bin/python benchmarks/server_floor.py            # about 3 minutes

Writes benchmarks/results/server_floor.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P
import server_throughput as T

ECHO_S = 6.0  # the blocks and rounds of the interleaved comparisons are server_throughput.py's
LAYOUTS = {"throughput": {"instances": 2, "max_batch_size": 2}, "latency": {"instances": 1, "max_batch_size": 8}}

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


# ---------------------------------------------------------------------------------------------- the stand-ins


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _answer(send: Send, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    return next((value.decode() for key, value in scope["headers"] if key == name), None)


def echo_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    header = json.dumps({"model_name": H.MODEL, "outputs": [{"name": "logits", "datatype": "FP32", "shape": [1, 1000],
                                                             "parameters": {"binary_data_size": 4000}}]}).encode()
    response = header + bytes(4000)
    headers = [(b"content-type", b"application/octet-stream"), (G.INFERENCE_HEADER.lower().encode(),
                                                                str(len(header)).encode())]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await _read_body(receive)
            await _answer(send, b"{}" if scope["path"] == "/v2/health/ready" else response, headers)

    return app


def minimal_app(repository_root: Path, instances: int, max_batch_size: int
                ) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    from inferd.io import DEFAULT_MAX_PIXELS
    from inferd.serve.repository import ModelRepository
    from inferd.serve.settings import ServingSettings
    from inferd.serve.v2.decode import decode_request
    from inferd.serve.v2.encode import encode_response
    from inferd.serve.v2.inference import run_inference
    from inferd.serve.v2.metadata import statistics

    repository = ModelRepository(repository_root, defaults=ServingSettings(
        instances=instances, max_batch_size=max_batch_size, max_queue_delay_ms=0))
    json_headers = [(b"content-type", b"application/json")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, repository.load_all, repository.close)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        body = await _read_body(receive)
        if path == "/v2/health/ready":
            await _answer(send, b"{}", json_headers)
        elif path == "/v2/models/stats":
            await _answer(send, json.dumps(statistics(repository, None, None)).encode(), json_headers)
        else:  # /v2/models/{name}/infer
            entry = repository.get(path.split("/")[3])
            with entry.measured() as phases:  # the statistics perf_analyzer and this benchmark read, as the server's
                with phases.input():
                    decoded = decode_request(body, _header(scope, G.INFERENCE_HEADER.lower().encode()))
                response = await run_inference(entry, decoded, phases=phases, max_image_pixels=DEFAULT_MAX_PIXELS)
                with phases.output():
                    payload, header_length = encode_response(response)
            await _answer(send, payload, [(b"content-type", b"application/octet-stream"),
                                          (G.INFERENCE_HEADER.lower().encode(), str(header_length).encode())])

    return app


async def _lifespan(receive: Receive, send: Send, start: Callable[[], Awaitable[Any]] | None = None,
                    stop: Callable[[], Awaitable[Any]] | None = None) -> None:
    await receive()
    if start is not None:
        await start()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    if stop is not None:
        await stop()
    await send({"type": "lifespan.shutdown.complete"})


def serve(kind: str, port: int, repository: Path, layout: str) -> None:
    import uvicorn

    app = echo_app() if kind == "echo" else minimal_app(repository, **LAYOUTS[layout])
    uvicorn.run(app, host=H.HOST, port=port, log_level="warning", access_log=False)


class StandIn(H.Server):
    """A stand-in served by this script in a subprocess, started and stopped as `inferd serve` is."""

    def __init__(self, kind: str, repository: Path, log_dir: Path, layout: str = "latency") -> None:
        super().__init__(repository, log_dir)
        self.flags = {"stand_in": kind, "layout": layout, **LAYOUTS[layout], "max_queue_delay_ms": 0}
        self.argv = [sys.executable, __file__, "--serve", kind, "--port", str(self.port), "--layout", layout,
                     "--package", str(repository / H.MODEL)]


# ---------------------------------------------------------------------------------------------- measuring


def main() -> None:
    parser = H.benchmark_parser(__doc__, "server_floor.json", client="raw")
    parser.add_argument("--serve", choices=("echo", "minimal"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=tuple(LAYOUTS), default="latency", help=argparse.SUPPRESS)
    if "--serve" in sys.argv:
        args = parser.parse_args()
        serve(args.serve, args.port, args.package.parent, args.layout)
        return
    args, quiet = H.start_benchmark(parser)
    repository = args.package.parent
    started = time.time()
    result: dict[str, Any] = {"benchmark": "server_floor", "machine": H.machine_info(), "package": str(args.package),
                              "client": args.client, "machine_before_start": quiet}
    with tempfile.TemporaryDirectory(prefix="inferd-floor-") as tmp:
        work = Path(tmp)
        binary = P.write_payloads("binary", work / "payloads", args.package)
        engine = T.Engine(args.package, list(P.photos_as_jpeg().values()))

        def echo(concurrency: int) -> dict[str, Any]:
            with StandIn("echo", repository, work) as server:
                spec = H.closed_spec(f"{server.url}/v2/models/{H.MODEL}/infer", binary, concurrency, ECHO_S,
                                     client=args.client)
                run = H.LoadRun(spec, work)
                run.wait_started()
                meter = H.CpuMeter(server.pid)
                out = run.wait()
                out["cpu"] = meter.stop(out.get("client_cpu_s"))
                requests = out["throughput_rps"] * out["elapsed_s"]
                out["server_cpu_ms_per_request"] = round(out["cpu"]["server_cpu_s"] / requests * 1000, 3)
                return out

        print("(a) echo: HTTP alone at concurrency 8 and 1 ...", flush=True)
        result["echo_c8"], result["echo_c1"] = echo(8), echo(1)
        print("(b) minimal server, concurrency 8, throughput layout, interleaved ...", flush=True)
        with StandIn("minimal", repository, work, "throughput") as server:
            result["minimal_c8_binary"] = T.interleaved(engine, "predict_batch4_2streams", server, binary, 8,
                                                        T.THROUGHPUT_BLOCK_S, T.ROUNDS, work, args.client)
        print("(c) minimal server, concurrency 1, latency layout, interleaved ...", flush=True)
        with StandIn("minimal", repository, work, "latency") as server:
            result["minimal_c1_binary"] = T.interleaved(engine, "predict_batch1", server, binary, 1,
                                                        T.LATENCY_BLOCK_S, T.ROUNDS, work, args.client)
        engine.close()

    c8, c1 = result["minimal_c8_binary"], result["minimal_c1_binary"]
    result["summary"] = {
        "echo_c8_server_cpu_ms_per_request": result["echo_c8"]["server_cpu_ms_per_request"],
        "echo_c8_rps": result["echo_c8"]["throughput_rps"],
        "echo_c1_round_trip_p50_ms": result["echo_c1"]["latency_ms"]["p50"],
        "minimal_c8_binary": {k: c8[k] for k in ("engine_mode", "engine_images_per_s", "server_rps",
                                                  "server_over_engine")},
        "minimal_c1_binary": {"engine_p50_ms": c1["engine_latency_ms"]["p50"],
                              "server_p50_ms": c1["server_latency_ms"]["p50"],
                              "added_latency_p50_ms": c1["added_latency_p50_ms"]},
        "failed_requests": sum(T.failures(run) for run in (result["echo_c8"], result["echo_c1"], c8, c1)),
    }
    result["total_wall_s"] = round(time.time() - started, 1)
    H.write_json(args.out, result)

    s = result["summary"]
    print(f"\necho, concurrency 8: {s['echo_c8_rps']:.0f} req/s, {s['echo_c8_server_cpu_ms_per_request']:.3f} ms of "
          f"server CPU per request; concurrency 1: {s['echo_c1_round_trip_p50_ms']:.2f} ms round trip (p50)")
    row = s["minimal_c8_binary"]
    print(f"minimal, concurrency 8: {row['server_rps']:.1f} req/s vs {row['engine_mode']} "
          f"{row['engine_images_per_s']:.1f} img/s = {row['server_over_engine']:.3f}x (interleaved)")
    row = s["minimal_c1_binary"]
    print(f"minimal, concurrency 1: p50 {row['server_p50_ms']:.2f} ms - engine {row['engine_p50_ms']:.2f} ms = "
          f"{row['added_latency_p50_ms']:.2f} ms added (interleaved)")
    print(f"non-200 or failed requests: {s['failed_requests']}; wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
