"""This tree's server against the server of an earlier commit, in one session, interleaved (issues 17 and 18: "no
worse than before, same machine, interleaved").

The earlier commit is checked out in a temporary git worktree and served from there (PYTHONPATH puts its `inferd`
first, with its own compiled-model cache, so neither side reads the other's), beside this tree's server, on the same
package and layout. Blocks alternate between the two, the order flipping each round, so drift on this noisy
machine falls on both sides alike:

  (a) throughput at concurrency 8 on the throughput layout (--instances 2 --max-batch-size 2
      --max-queue-delay-ms 0, as benchmarks/server_throughput.py (b)): V2 binary tensors over HTTP, and tensors
      over gRPC;
  (b) latency at concurrency 1 (--max-batch-size 8 --max-queue-delay-ms 0, as server_throughput.py (c)), the same
      two faces, with this tree's engine alone at batch 1 in its own blocks: a side's added latency is its server
      median minus that engine median (the earlier commit's engine ran the same precision when the result's
      "load_info" entries agree).

    .venv/bin/python benchmarks/server_before_after.py --before a455415 --precision bf16   # about 5 minutes

Writes benchmarks/results/server_before_after.json and prints a summary.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as H
import loadgen as G
import payloads as P
from server_throughput import Engine

ROUNDS = 5
BLOCK_S = 4.0
WARMUP_S = 1.0
SIDES = ("before", "after")


@contextlib.contextmanager
def worktree(ref: str) -> Iterator[Path]:
    """`ref` checked out beside this tree, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="inferd-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), ref], cwd=H.ROOT, check=True,
                   capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=H.ROOT, check=False)


@contextlib.contextmanager
def both_servers(source: Path, repository: Path, work: Path, **flags: Any) -> Iterator[dict[str, H.Server]]:
    """The earlier commit's server (its source first on PYTHONPATH, its own cache) and this tree's, on one layout,
    each with a gRPC port."""
    before, after = (H.Server(repository, work, grpc_port=H.free_port(), **flags) for _ in SIDES)
    old_env = {"PYTHONPATH": str(source), "INFERD_CACHE_DIR": str(work / "cache-before")}
    check = subprocess.run([sys.executable, "-c", "import inferd; print(inferd.__file__)"], capture_output=True,
                           text=True, check=True, env={**os.environ, **old_env}, cwd=work)
    assert check.stdout.strip().startswith(str(source)), f"the earlier commit's inferd is not first: {check.stdout}"
    with contextlib.ExitStack() as stack:
        with mock.patch.dict(os.environ, old_env):  # the server process inherits them
            stack.enter_context(before)
        stack.enter_context(after)
        yield {"before": before, "after": after}


def load_info(server: H.Server) -> dict[str, Any]:
    """What the server says it compiled: its config's parameters and its start-up log's lines on the model."""
    status, _, body = H.http("GET", f"{server.url}/v2/models/{H.MODEL}/config")
    return {"parameters": json.loads(body).get("parameters", {}) if status == 200 else None,
            "log": [line for line in server.log_tail(200).splitlines() if H.MODEL in line]}


def block(server: H.Server, payloads: list[dict[str, Any]], concurrency: int, work: Path, grpc: bool,
          client: str) -> dict[str, Any]:
    extra = {"grpc_address": f"{H.HOST}:{server.flags['grpc_port']}", "model": H.MODEL} if grpc else {}
    spec = H.closed_spec(f"{server.url}/v2/models/{H.MODEL}/infer", payloads, concurrency, BLOCK_S,
                         warmup_s=WARMUP_S, client=client, records=True, **extra)
    return H.run_load(spec, work, server)


def side_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [r.latency_s for run in runs for r in G.take_records(run) if 0 <= r.start_s < BLOCK_S and r.ok]
    failed = sum(sum(run["errors"].values()) + sum(n for s, n in run["statuses"].items() if s != "200") for run in runs)
    return {"rps": round(sum(run["throughput_rps"] for run in runs) / len(runs), 2),
            "rps_per_block": [run["throughput_rps"] for run in runs],
            "latency_ms": G.latency_summary(latencies), "failed": failed}


def compare(servers: dict[str, H.Server], payloads: dict[str, list[dict[str, Any]]], concurrency: int, work: Path,
            engine: Engine | None, rounds: int, client: str) -> dict[str, Any]:
    """Every face's blocks for both sides (and the engine's, when given), alternating, the order flipping per round."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {face: {side: [] for side in SIDES} for face in payloads}
    engine_runs = []
    for round_ in range(rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        for face, face_payloads in payloads.items():
            for side in order:
                runs[face][side].append(block(servers[side], face_payloads, concurrency, work, face == "grpc", client))
        if engine is not None:
            engine_runs.append(engine.run("predict_batch1", BLOCK_S))
    result: dict[str, Any] = {}
    engine_p50 = None
    if engine_runs:
        engine_p50 = G.latency_summary([s for run in engine_runs for s in run["latencies_s"]])["p50"]
        result["engine_batch1_p50_ms"] = engine_p50
    for face, sides in runs.items():
        summary = {side: side_summary(sides[side]) for side in SIDES}
        summary["after_over_before_rps"] = round(summary["after"]["rps"] / summary["before"]["rps"], 3)
        p50 = {side: summary[side]["latency_ms"]["p50"] for side in SIDES}
        summary["p50_after_minus_before_ms"] = round(p50["after"] - p50["before"], 3)
        if engine_p50 is not None:
            for side in SIDES:
                summary[side]["added_latency_p50_ms"] = round(p50[side] - engine_p50, 3)
        result[face] = summary
    return result


def main() -> None:
    parser = H.benchmark_parser(__doc__, "server_before_after.json", client="raw")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="blocks per side and face (2 for a smoke test)")
    parser.add_argument("--only", choices=("c8", "c1"), help="run one concurrency level (with more --rounds)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                        help="serve both sides at this precision (each side's AUTO may choose differently: an earlier "
                             "commit chose by speed alone), so that the two differ in their serving code only")
    parser.add_argument("--before", required=True, help="the earlier commit (any git ref) to serve from a worktree")
    args, quiet = H.start_benchmark(parser)
    repository = args.package.parent
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "server_before_after", "machine": H.machine_info(), "machine_before_start": quiet,
        "before": subprocess.run(["git", "rev-parse", args.before], cwd=H.ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip(),
        "after": subprocess.run(["git", "rev-parse", "HEAD"], cwd=H.ROOT, capture_output=True, text=True,
                                check=True).stdout.strip(),
        "package": str(args.package), "precision": args.precision or "each side's AUTO",
        "rounds": args.rounds, "block_s": BLOCK_S, "warmup_s": WARMUP_S,
        "client": args.client}
    layout = {"precision": args.precision} if args.precision else {}
    with tempfile.TemporaryDirectory(prefix="inferd-bench-") as tmp, worktree(args.before) as source:
        work = Path(tmp)
        payloads = {"http_binary": P.write_payloads("binary", work / "payloads", args.package),
                    "grpc": P.write_payloads("tensor", work / "payloads", args.package)}
        if args.only != "c1":
            print("(a) concurrency 8, throughput layout, before and after interleaved ...", flush=True)
            with both_servers(source, repository, work, instances=2, max_batch_size=2, max_queue_delay_ms=0,
                              **layout) as servers:
                result["load_info_c8"] = {side: load_info(server) for side, server in servers.items()}
                result["c8"] = compare(servers, payloads, 8, work, None, args.rounds, args.client)
        if args.only != "c8":
            print("(b) concurrency 1, before, after and the engine alone interleaved ...", flush=True)
            engine = Engine(args.package, list(P.photos_as_jpeg().values()))
            with both_servers(source, repository, work, max_batch_size=8, max_queue_delay_ms=0, **layout) as servers:
                result["load_info_c1"] = {side: load_info(server) for side, server in servers.items()}
                result["c1"] = compare(servers, payloads, 1, work, engine, args.rounds, args.client)
            engine.close()
    result["total_wall_s"] = round(time.time() - started, 1)
    result["loadavg_at_end"] = list(os.getloadavg())
    H.write_json(args.out, result)

    print(f"\nmachine: {result['machine']['cpu']}, {result['machine']['cores']} cores; "
          f"before {result['before'][:7]}, after {result['after'][:7]}")
    for level in ("c8", "c1"):
        for face in payloads if level in result else ():
            row = result[level][face]
            line = (f"{level} {face:12s}: before {row['before']['rps']:.1f} req/s p50 {row['before']['latency_ms']['p50']:.2f} ms"
                    f" | after {row['after']['rps']:.1f} req/s p50 {row['after']['latency_ms']['p50']:.2f} ms"
                    f" | after/before {row['after_over_before_rps']}x, p50 {row['p50_after_minus_before_ms']:+.2f} ms")
            if "added_latency_p50_ms" in row["after"]:
                line += (f" | added over the engine: before {row['before']['added_latency_p50_ms']:.2f} ms, "
                         f"after {row['after']['added_latency_p50_ms']:.2f} ms")
            print(line + f" | failed {row['before']['failed']}+{row['after']['failed']}")
    print(f"wrote {args.out} in {result['total_wall_s']} s")


if __name__ == "__main__":
    main()
