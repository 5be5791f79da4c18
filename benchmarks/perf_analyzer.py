"""Triton's own perf_analyzer against `inferd serve`: HTTP and gRPC at concurrency 1 and 8, as a Triton user measures.

perf_analyzer comes from the pinned tritonclient 2.41.0 wheel, fetched and run
as `tests/perf_analyzer.py` does (never installed). By default it measures as
perf_analyzer does by default: 5-second windows, until three in a row agree
within 10 %, at each concurrency. It reports the client's throughput and
latency percentiles, and the server's own queue and compute phases (input,
infer, output) from `/v2/models/M/stats`.

    .venv/bin/python benchmarks/perf_analyzer.py     # about a minute on a quiet machine
    .venv/bin/python benchmarks/perf_analyzer.py --package models/minilm-l6 \
        --out benchmarks/results/perf_analyzer_text.json   # the text model, on strings perf_analyzer makes up

Writes benchmarks/results/perf_analyzer.json and prints a summary.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H

sys.path.insert(0, str(H.ROOT))

from tests.perf_analyzer import PerfAnalyzer, read_report

PROTOCOLS = ("http", "grpc")
CSV_COLUMNS = {  # perf_analyzer's CSV column -> this file's key; its times are microseconds
    "Inferences/Second": "throughput_per_s", "p50 latency": "p50_us", "p90 latency": "p90_us",
    "p95 latency": "p95_us", "p99 latency": "p99_us", "Client Send": "client_send_us",
    "Network+Server Send/Recv": "network_and_server_send_recv_us", "Server Queue": "server_queue_us",
    "Server Compute Input": "server_compute_input_us", "Server Compute Infer": "server_compute_infer_us",
    "Server Compute Output": "server_compute_output_us", "Client Recv": "client_recv_us",
}


def _children_cpu_s() -> float:
    """CPU seconds of this process's finished children: perf_analyzer's, once its run has returned (the server,
    still running, is not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", type=Path, default=H.DEFAULT_PACKAGE,
                        help="the package to serve and measure, named as its folder (models/minilm-l6: the text model)")
    parser.add_argument("--measurement-interval", type=int, default=5000, help="window length in ms")
    parser.add_argument("--stability", type=int, default=10, help="percent the last three windows may differ")
    parser.add_argument("--concurrency-range", default="1:8:7", help="perf_analyzer's start:end:step")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for the machine to be idle first")
    parser.add_argument("--out", type=Path, default=H.RESULTS / "perf_analyzer.json")
    args = parser.parse_args()
    if not (args.package / "manifest.json").is_file():
        sys.exit(f"{args.package} is missing: run `.venv/bin/inferd prepare models` first")
    analyzer = PerfAnalyzer.fetch()
    quiet = None if args.no_wait else H.wait_for_quiet()
    started = time.time()
    window = ("--measurement-interval", str(args.measurement_interval))
    result: dict[str, Any] = {
        "benchmark": "perf_analyzer", "machine": H.machine_info(), "machine_before_start": quiet,
        "perf_analyzer": {"from": "tritonclient==2.41.0", "concurrency_range": args.concurrency_range,
                          "measurement_interval_ms": args.measurement_interval, "stability_percent": args.stability},
    }
    with tempfile.TemporaryDirectory(prefix="inferd-perf-analyzer-") as tmp:
        work = Path(tmp)
        repository = work / "repository"
        repository.mkdir()
        model = args.package.resolve().name
        (repository / model).symlink_to(args.package.resolve())
        grpc_port = H.free_port()
        with H.Server(repository, work, grpc_port=grpc_port, access_log=False) as server:
            result["server"] = server.describe()
            addresses = {"http": f"{H.HOST}:{server.port}", "grpc": f"{H.HOST}:{grpc_port}"}
            for protocol in PROTOCOLS:
                print(f"perf_analyzer over {protocol} ...", flush=True)
                report = work / f"{protocol}.csv"
                meter, children = H.CpuMeter(server.pid), _children_cpu_s()
                run = analyzer.run(addresses[protocol], model, report, protocol=protocol,
                                   concurrency=args.concurrency_range, window=window,
                                   stability_percent=args.stability, timeout_s=900)
                result[protocol] = {
                    "exit_code": run.returncode, "cpu": meter.stop(client_cpu_s=_children_cpu_s() - children),
                    "levels": [{"concurrency": int(row["Concurrency"]),
                                **{key: row[column] for column, key in CSV_COLUMNS.items()}}
                               for row in (read_report(report) if report.is_file() else [])],
                    "output_tail": (run.stdout + run.stderr)[-1500:],
                }
    result["total_wall_s"] = round(time.time() - started, 1)
    H.write_json(args.out, result)

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores")
    for protocol in PROTOCOLS:
        measured = result[protocol]
        if measured["exit_code"] != 0:
            print(f"{protocol}: perf_analyzer exited with {measured['exit_code']}:\n{measured['output_tail']}")
        for level in measured["levels"]:
            print(f"{protocol} concurrency {level['concurrency']}: {level['throughput_per_s']:.1f} infer/s, "
                  f"p50 {level['p50_us'] / 1000:.1f} ms, p99 {level['p99_us'] / 1000:.1f} ms; server queue "
                  f"{level['server_queue_us'] / 1000:.2f} ms, compute input {level['server_compute_input_us'] / 1000:.2f}"
                  f" / infer {level['server_compute_infer_us'] / 1000:.2f} / output "
                  f"{level['server_compute_output_us'] / 1000:.2f} ms")
    print(f"wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
