"""Does `inferd loadtest` measure what benchmarks/server_throughput.py measures? (issue 20: within 10 %.)

On one server per layout, blocks alternate between server_throughput's own measurement (its load generator,
`harness.run_load` on a closed spec of V2 binary photos with the raw client, as in its phases (b) and (c)) and
`inferd loadtest` run as a user runs it (its own process, stable windows, random tensors of the same shape and
bytes), ROUNDS times. This machine drifts by a quarter within minutes, so only blocks side by side are compared:

  concurrency 8 on the throughput layout (--instances 2 --max-batch-size 2 --max-queue-delay-ms 0): throughput;
  concurrency 1 (--max-batch-size 8 --max-queue-delay-ms 0): throughput and median latency.

    .venv/bin/python benchmarks/loadtest_agreement.py        # about 6 minutes

Writes benchmarks/results/loadtest_agreement.json and prints the ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P

ROUNDS = 4
BLOCK_S = 6.0
WARMUP_S = 1.0
WINDOW_MS = 2000
AGREEMENT = 0.10


def benchmark_block(server: H.Server, payloads: list[dict[str, Any]], concurrency: int, work: Path,
                    client: str) -> dict[str, float | None]:
    spec = H.closed_spec(f"{server.url}/v2/models/{H.MODEL}/infer", payloads, concurrency, BLOCK_S,
                         warmup_s=WARMUP_S, client=client, records=True)
    run = H.run_load(spec, work, server)
    latencies = [r.latency_s for r in G.take_records(run) if 0 <= r.start_s < BLOCK_S and r.ok]
    return {"rps": run["throughput_rps"], "p50_ms": G.latency_summary(latencies)["p50"]}


def loadtest_block(server: H.Server, concurrency: int, work: Path, client: str) -> dict[str, Any]:
    report = work / f"loadtest-c{concurrency}.json"
    subprocess.run([*H.inferd_command(), "loadtest", server.url, "--model", H.MODEL, "--concurrency", str(concurrency),
                    "--window-ms", str(WINDOW_MS), "--client", client, "--json", str(report)],
                   check=True, capture_output=True, cwd=H.ROOT)
    level = json.loads(report.read_text())["levels"][0]
    return {"rps": level["throughput_rps"], "p50_ms": level["latency_ms"]["p50"], "windows": level["windows"],
            "stable": level["stable"], "errors": level["errors"]}


def agreement(server: H.Server, payloads: list[dict[str, Any]], concurrency: int, work: Path, rounds: int,
              client: str) -> dict[str, Any]:
    blocks = []
    for round_ in range(rounds):
        pair: dict[str, Any] = {}
        for side in (("benchmark", "loadtest") if round_ % 2 == 0 else ("loadtest", "benchmark")):
            pair[side] = (benchmark_block(server, payloads, concurrency, work, client) if side == "benchmark"
                          else loadtest_block(server, concurrency, work, client))
        blocks.append(pair)

    def mean(side: str, key: str) -> float:
        values = [b[side][key] for b in blocks if b[side][key] is not None]
        return sum(values) / len(values)

    result: dict[str, Any] = {"concurrency": concurrency, "blocks": blocks}
    for key in ("rps", "p50_ms"):
        ratio = mean("loadtest", key) / mean("benchmark", key)
        result[key] = {"benchmark": round(mean("benchmark", key), 3), "loadtest": round(mean("loadtest", key), 3),
                       "loadtest_over_benchmark": round(ratio, 3), "within_10_percent": abs(ratio - 1) <= AGREEMENT}
    return result


def main() -> None:
    parser = H.benchmark_parser(__doc__, "loadtest_agreement.json", client="raw")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args, quiet = H.start_benchmark(parser)
    repository = args.package.parent
    started = time.time()
    result: dict[str, Any] = {"benchmark": "loadtest_agreement", "machine": H.machine_info(),
                              "machine_before_start": quiet, "package": str(args.package), "client": args.client,
                              "rounds": args.rounds, "benchmark_block_s": BLOCK_S, "loadtest_window_ms": WINDOW_MS}
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp:
        work = Path(tmp)
        binary = P.write_payloads("binary", work / "payloads", args.package)
        with H.Server(repository, work, instances=2, max_batch_size=2, max_queue_delay_ms=0) as server:
            result["c8"] = agreement(server, binary, 8, work, args.rounds, args.client)
        with H.Server(repository, work, max_batch_size=8, max_queue_delay_ms=0) as server:
            result["c1"] = agreement(server, binary, 1, work, args.rounds, args.client)
    result["total_wall_s"] = round(time.time() - started, 1)
    H.write_json(args.out, result)
    for level in ("c8", "c1"):
        for key in ("rps", "p50_ms"):
            row = result[level][key]
            print(f"{level} {key:6s}: server_throughput's generator {row['benchmark']}, inferd loadtest {row['loadtest']}"
                  f" = {row['loadtest_over_benchmark']}x (within 10%: {row['within_10_percent']})")
    print(f"wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
