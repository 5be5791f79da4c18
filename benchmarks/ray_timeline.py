"""Where a replica's start from zero goes: phases read from the logs Ray and Serve write anyway, and inferd's share.

A Ray session's logs carry a timestamp for each step of a replica's start: the controller decides to scale up and
starts the replica (controller log), the raylet launches a worker process (raylet.out), the worker's core starts
and runs the actor's creation task, which loads the replica class and so imports Serve's replica code and inferd
(python-core-worker-*_PID.log), the controller times the constructor and the first health check and marks the
replica running. The client's send and answer times close the timeline. `inferd_phases` times, in a fresh
process, what of that inferd owns: its imports, and the model's load from the warm compiled cache.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_CONTROLLER = re.compile(rf"^\w+ {_STAMP} controller \d+ -- (.*)$")
_BRACKETED = re.compile(rf"^\[{_STAMP} \w \d+ \d+\] (.*)$")


def _seconds(stamp: str) -> float:
    """Ray writes local wall-clock time with milliseconds."""
    return time.mktime(datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timetuple()) + int(stamp[-3:]) / 1000


def _lines(path: Path, pattern: re.Pattern[str]) -> list[tuple[float, str]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if matched := pattern.match(line):
            found.append((_seconds(matched[1]), matched[2]))
    return found


def replica_start(logs: Path, deployment: str, sent: float, answered: float) -> dict[str, Any]:
    """The phases of the first replica of `deployment` that started after `sent` (seconds since the epoch)."""
    controller = sorted(line for path in (logs / "serve").glob("controller_*.log") for line in _lines(path, _CONTROLLER))
    after = [(at, text) for at, text in controller if at >= sent - 0.01]
    upscale = next(at for at, text in after if text.startswith(f"Upscaling Deployment(name='{deployment}'"))
    starting, replica = next((at, re.search(r"id='(\w+)'", text)[1]) for at, text in after  # type: ignore[index]
                             if text.startswith("Starting Replica") and f"deployment='{deployment}'" in text)
    ready, ready_text = next((at, text) for at, text in after if f"Replica(id='{replica}'" in text
                             and "started successfully" in text)
    pid = re.search(r"\(PID: (\d+)\)", ready_text)[1]  # type: ignore[index]
    constructor_s = float(re.search(r"health check took ([\d.]+)s", ready_text)[1])  # type: ignore[index]
    launched = next(at for at, text in _lines(logs / "raylet.out", _BRACKETED)
                    if f"Started worker process with pid {pid} " in text)
    worker = _lines(next(logs.glob(f"python-core-worker-*_{pid}.log")), _BRACKETED)
    core_up = next(at for at, text in worker if "Constructing CoreWorkerProcess" in text)
    creating = next(at for at, text in worker if "Creating actor" in text)
    created = next(at for at, text in worker if "Actor creation task finished" in text)
    phases = {
        "autoscaler_decision_s": upscale - sent,
        "replica_scheduled_s": starting - upscale,
        "worker_process_launch_s": launched - starting,
        "worker_python_and_ray_start_s": core_up - launched,
        "worker_registration_s": creating - core_up,
        "actor_class_load_s": created - creating,
        "constructor_and_first_health_check_s": constructor_s,
        "serve_marks_running_s": ready - created - constructor_s,
        "route_update_and_inference_s": answered - ready,
    }
    return {"replica": replica, "pid": int(pid), "total_s": round(answered - sent, 3),
            "replica_start_to_answer_s": round(answered - starting, 3),
            "phases": {name: round(value, 3) for name, value in phases.items()}}


_PHASES = """
import json, sys, time
times = {}
t = time.perf_counter(); import ray; times["import_ray_s"] = time.perf_counter() - t
t = time.perf_counter(); import ray.serve._private.replica; times["import_serve_replica_s"] = time.perf_counter() - t
t = time.perf_counter(); import inferd.deploy.ray.replica; times["import_inferd_replica_s"] = time.perf_counter() - t
t = time.perf_counter(); import openvino; times["import_openvino_s"] = time.perf_counter() - t
from inferd.package import ModelPackage
t = time.perf_counter(); ModelPackage.load(sys.argv[1]); times["package_load_and_sha256_s"] = time.perf_counter() - t
from inferd.runtime import load
t = time.perf_counter()
model = load(sys.argv[1], threads=int(sys.argv[2]), warmup_rows=int(sys.argv[3]))
times["model_load_s"] = time.perf_counter() - t
times["of_which_compile_from_cache_s"] = model.load_info.compile_seconds
times["cached"] = model.load_info.cached
print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in times.items()}))
"""


def inferd_phases(package: Path, threads: int, warmup_rows: int) -> dict[str, Any]:
    """In a fresh process, as in a new replica's worker: the imports (Ray's first, then inferd's on top) and the
    model's load (package read and hash check, compile from the warm cache, warm-up at `warmup_rows`)."""
    ran = subprocess.run([sys.executable, "-c", _PHASES, str(package), str(threads), str(warmup_rows)],
                         capture_output=True, text=True, check=True, timeout=300)
    return dict(json.loads(ran.stdout.strip().splitlines()[-1]))
