"""inferd on Ray Serve against `inferd serve`, on this machine: what Serve's proxy and router cost, and scale from zero.

    .venv/bin/python benchmarks/ray_serve.py              # writes benchmarks/results/ray_serve.json
    .venv/bin/python benchmarks/ray_serve.py --only cold  # scale from zero alone, into the same file

Both serve EfficientNet-Lite0 with V2 binary tensors (the photographs `_load.write_payloads` prepares), one after
the other on the same two cores, so neither competes with the other: `inferd serve` with its defaults (one
instance using every core), then a one-node Ray cluster on 127.0.0.1 with one replica reserving both CPUs (so the
same threads) behind Serve's HTTP proxy and inferd's router. Closed loops at concurrency 1 and 8 give throughput,
p50 and p99; the added latency of Serve is the difference of the p50s at concurrency 1.

Scale from zero: the model's deployment at zero replicas, one request; the time to its answer covers Serve's
autoscaler noticing the request, the replica's start and its model's load from the warm compiled-model cache
(filled by the runs before), and the inference; `replica_start_to_answer_s` leaves out the autoscaler's part,
from the controller's start of the replica on. Each trial waits until the previous replica has stopped, since it
holds the node's CPUs until then. Serve's own count of the replica's start (from its creation
to ready) is read from Ray's metrics exporter, and each trial is broken down into phases from Ray's logs, beside
inferd's own share timed in a fresh process (`ray_timeline`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import harness as H
import loadgen as G
import payloads as P
import ray_hops as K
import ray_timeline as T

from inferd.deploy.ray.settings import LOOPBACK_SWITCH, RaySettings
from inferd.runtime.devices import cpu_features
from inferd.serve.settings import ServerSettings

APP = "inferd"
DURATION_S = 10.0
COLD_TRIALS = 5
HOP_REQUESTS = 200


def main() -> None:
    parser = H.benchmark_parser(__doc__, "ray_serve.json")
    parser.add_argument("--only", choices=("all", "cold", "hops"), default="all",
                        help="one part alone (cold: scale from zero; hops: Serve's latency taken apart), replacing "
                             "that part of an existing --out file")
    args, quiet = H.start_benchmark(parser)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="ray-serve-bench-"))
    repository = work / "models"
    repository.mkdir()
    (repository / H.MODEL).symlink_to(args.package.resolve())
    payloads = P.write_payloads("binary", work / "payloads", args.package)
    infer = f"/v2/models/{H.MODEL}/infer"
    result: dict[str, Any] = {"machine": {**H.machine_info(), "cpu_features": list(cpu_features())}, "quiet": quiet,
                              "duration_s": DURATION_S, "client": args.client}
    earlier = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if args.only != "all" and earlier:
        result = {**earlier, f"machine_{args.only}": result["machine"], f"quiet_{args.only}": quiet}
    elif "notes" in earlier:
        result["notes"] = earlier["notes"]  # what was found by hand, kept across runs
    if args.only == "all":
        with H.Server(repository, work, access_log=False) as server:
            result["inferd_serve"] = {f"c{c}": H.run_load(H.closed_spec(server.url + infer, payloads, c, DURATION_S,
                                                                        client=args.client), work, server)
                                      for c in (1, 8)}
    quiet_server = ServerSettings(access_log=False)
    body, headers = Path(payloads[0]["path"]).read_bytes(), _headers(payloads[0])
    if args.only in ("all", "hops"):
        replica = quiet_server.model_copy(update={"repository": repository, "models": quiet_server.models.model_copy(
            update={"threads": RaySettings(cpus_per_replica=2).threads})})
        hops = {"replica_in_process": K.replica_in_process(replica.model_dump(mode="json"), H.MODEL, infer, headers,
                                                            body, HOP_REQUESTS)}
    os.environ[LOOPBACK_SWITCH] = "0"  # before Ray is imported: the node stays on 127.0.0.1
    import ray
    from ray import serve

    from inferd.deploy.ray.app import build_app, start_proxies

    metrics_port = H.free_port()
    ray.init(_node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             _metrics_export_port=metrics_port, _system_config={"metrics_report_interval_ms": 500},
             logging_level=logging.WARNING, log_to_driver=False, _temp_dir=str(work / "ray"))
    try:
        port = H.free_port()
        start_proxies(RaySettings(http_port=port, proxy_location="HeadOnly"))
        url = f"http://{H.HOST}:{port}"
        if args.only in ("all", "hops"):
            serve.run(build_app(repository, quiet_server, RaySettings(cpus_per_replica=2)), name=APP, route_prefix="/")
            if args.only == "all":
                result["ray_serve"] = {f"c{c}": H.run_load(H.closed_spec(url + infer, payloads, c, DURATION_S,
                                                                         client=args.client), work) for c in (1, 8)}
            result["hops_p50_ms"] = {**hops, **K.over_ray(APP, H.MODEL, url, infer, headers, body, HOP_REQUESTS)}
        if args.only == "hops":
            return _finish(args.out, result, started, work)
        layout = RaySettings(min_replicas=0, max_replicas=1, cpus_per_replica=2, upscale_delay_s=0, downscale_delay_s=1)
        serve.run(build_app(repository, quiet_server, layout), name=APP, route_prefix="/")
        logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
        result["scale_from_zero"] = _scale_from_zero(url + infer, body, headers, metrics_port, logs)
        result["scale_from_zero"]["inferd_in_a_fresh_process"] = T.inferd_phases(
            repository / H.MODEL, layout.threads, quiet_server.models.max_batch_size)
    finally:
        serve.shutdown()
        ray.shutdown()
    _finish(args.out, result, started, work)


def _finish(out: Path, result: dict[str, Any], started: float, work: Path) -> None:
    result["summary"] = _summary(result)
    result["total_wall_s"] = round(time.time() - started, 1)
    H.write_json(out, result)
    shutil.rmtree(work, ignore_errors=True)
    print(result["summary"])


def _headers(payload: dict[str, Any]) -> dict[str, str]:
    return {G.INFERENCE_HEADER: str(payload["header_length"]), "Content-Type": "application/octet-stream"}


def _replicas() -> int:
    """The model's replicas in any state: one still stopping holds its CPUs, and the next could not start until
    it let them go (earlier runs counted only running ones, and so timed that wait as the worker's launch)."""
    from ray import serve

    return sum(serve.status().applications[APP].deployments[H.MODEL].replica_states.values())


def _scale_from_zero(url: str, body: bytes, headers: dict[str, str], metrics_port: int, logs: Path) -> dict[str, Any]:
    trials = []
    for _ in range(COLD_TRIALS):
        deadline = time.monotonic() + 120
        while _replicas() > 0:
            if time.monotonic() > deadline:
                raise RuntimeError("the deployment did not scale to zero within 120 s")
            time.sleep(0.2)
        time.sleep(1)
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)
        sent, sent_at = time.perf_counter(), time.time()
        with urllib.request.urlopen(request, timeout=120) as answer:
            status = answer.status
            answer.read()
        trials.append({"status": status, "first_answer_s": round(time.perf_counter() - sent, 3), "sent_at": sent_at,
                       "answered_at": time.time()})
    time.sleep(2)  # Ray's exporter publishes every 0.5 s, and its logs are flushed
    for trial in trials:
        trial["timeline"] = T.replica_start(logs, H.MODEL, trial.pop("sent_at"), trial.pop("answered_at"))
    text = urllib.request.urlopen(f"http://{H.HOST}:{metrics_port}/metrics", timeout=10).read().decode()
    startup = _histogram(text, "ray_serve_replica_startup_latency_ms")
    initialization = _histogram(text, "ray_serve_replica_initialization_latency_ms")
    return {"trials": trials, "replica_startup_mean_ms": startup, "replica_initialization_mean_ms": initialization}


def _histogram(text: str, name: str) -> float | None:
    """The mean of a Ray histogram over the model's deployment (the router's replica is left out)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums = counts = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("deployment") != H.MODEL:
                continue
            if sample.name == f"{name}_sum":
                sums += sample.value
            elif sample.name == f"{name}_count":
                counts += sample.value
    return round(sums / counts, 1) if counts else None


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = dict(result.get("summary", {}))
    for c in ("c1", "c8") if "ray_serve" in result else ():
        ours, theirs = result["ray_serve"][c], result["inferd_serve"][c]
        summary[c] = {
            "inferd_serve": {"rps": theirs["throughput_rps"], "p50_ms": theirs["latency_ms"]["p50"],
                             "p99_ms": theirs["latency_ms"]["p99"]},
            "ray_serve": {"rps": ours["throughput_rps"], "p50_ms": ours["latency_ms"]["p50"],
                          "p99_ms": ours["latency_ms"]["p99"]},
            "throughput_ratio": round(ours["throughput_rps"] / theirs["throughput_rps"], 3),
        }
    if "c1" in summary:
        summary["added_latency_c1_p50_ms"] = round(summary["c1"]["ray_serve"]["p50_ms"]
                                                   - summary["c1"]["inferd_serve"]["p50_ms"], 3)
    if "hops_p50_ms" in result:
        hops = result["hops_p50_ms"]
        summary["hops_p50_ms"] = {  # differences of calls on the same replica, one after the other
            "proxy_and_router": round(hops["through_proxy_and_router"] - hops["handle_grpc"], 2),
            "grpc_saves_per_hop": round(hops["handle_by_reference"] - hops["handle_grpc"], 2),
            "grpc_saves_per_hop_bodiless": round(hops["handle_by_reference_bodiless"] - hops["handle_grpc_bodiless"], 2)}
    cold = result["scale_from_zero"]
    summary["scale_from_zero_first_answer_s"] = [t["first_answer_s"] for t in cold["trials"]]
    summary["replica_start_to_first_answer_s"] = [t["timeline"]["replica_start_to_answer_s"] for t in cold["trials"]]
    summary["replica_startup_mean_ms"] = cold["replica_startup_mean_ms"]
    return summary


if __name__ == "__main__":
    main()
