"""Throughput through the bundle's nginx against the same `inferd serve` processes reached directly (issue 18.5).

Three layouts, in alternating blocks so a busy machine weighs on each alike: a client straight to one backend,
nginx in front of that one backend (what the proxy hop costs), and nginx in front of three backends (what
balancing buys, or costs, when the backends share this machine's cores). Each block posts a JPEG to
`/predict/efficientnet-lite0` from `--clients` threads for `--seconds`.

    .venv/bin/python benchmarks/nginx_balancer.py          # about 2 minutes

Writes benchmarks/results/nginx_balancer.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import encode, free_port  # noqa: E402
from tests.test_nginx import MODEL, Backend, balancer  # noqa: E402


def throughput(url: str, image: bytes, clients: int, seconds: float) -> tuple[float, int]:
    """Requests per second answered 200, and the number that were not."""
    done, failed = [0], [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop:
                ok = http.post(f"{url}/predict/{MODEL}", files={"image": ("c.jpg", image)}).status_code == 200
                with lock:
                    (done if ok else failed)[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0] / seconds, failed[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    from skimage import data

    from inferd.zoo import efficientnet_lite0

    image = encode(data.coffee(), "JPEG")
    work = Path(tempfile.mkdtemp(prefix="inferd-nginx-bench-"))
    efficientnet_lite0.prepare(work / "models")
    shutil.rmtree(work / "models" / "minilm-l6", ignore_errors=True)
    backends = [Backend(work / "models", free_port(), work / f"backend{i}.log") for i in range(3)]
    nginx_one = nginx_three = None
    try:
        for backend in backends:
            backend.start()
            backend.wait_ready()
        nginx_one = balancer(backends[:1], work / "nginx1", rate_per_s=100_000, burst=100_000)
        nginx_three = balancer(backends, work / "nginx3", rate_per_s=100_000, burst=100_000)
        layouts = {"direct, 1 backend": f"http://{backends[0].address}", "nginx, 1 backend": nginx_one.url,  # type: ignore[attr-defined]
                   "nginx, 3 backends": nginx_three.url}  # type: ignore[attr-defined]
        runs: dict[str, list[float]] = {name: [] for name in layouts}
        failures = dict.fromkeys(layouts, 0)
        throughput(layouts["direct, 1 backend"], image, options.clients, 2)  # warm-up
        for _ in range(options.rounds):
            for name, url in layouts.items():
                rate, failed = throughput(url, image, options.clients, options.seconds)
                runs[name].append(rate)
                failures[name] += failed
    finally:
        for proxy in (nginx_one, nginx_three):
            if proxy is not None:
                proxy.stop()
        for backend in backends:
            backend.stop(signal.SIGTERM)
    result = {"clients": options.clients, "seconds": options.seconds, "rounds": options.rounds,
              "requests_per_s": {name: statistics.median(rates) for name, rates in runs.items()},
              "runs": runs, "failed": failures}
    out = ROOT / "benchmarks" / "results" / "nginx_balancer.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, rate in result["requests_per_s"].items():
        print(f"{name:>20}: {rate:6.1f} req/s (median of {options.rounds}), {failures[name]} failed")


if __name__ == "__main__":
    main()
