"""Where Serve's added latency goes: one request's path taken apart, hop by hop, at concurrency 1.

Through Serve, a V2 request goes client -> Serve's HTTP proxy -> inferd's router (a deployment) -> the model's
replica, which runs it through inferd's app. Each piece is timed alone, on the same payload, as p50s:

* `replica_in_process`: the replica's `forward` (inferd's app called through its ASGI interface), no Ray at all;
* `handle_*`: a DeploymentHandle call from the driver straight to the replica, by reference (a Ray actor call,
  whose argument past 100 KiB goes through the object store) and over Serve's gRPC channel (`_by_reference=False`),
  for the payload and for a bodiless health call;
* `through_proxy_and_router`: the whole path, over HTTP.

The proxy-and-router share is the whole path less a gRPC handle call; what gRPC saves on the router's hop is a
call by reference less one over gRPC. Differences are taken between calls made one after the other on the same
replica; `replica_in_process` runs in the driver at another moment, so it only says what order the app's own
time is (on a shared machine, not a term to subtract).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

WARMUP = 5


def _p50_ms(call: Callable[[], object], count: int) -> float:
    for _ in range(WARMUP):
        call()
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        spent.append(time.perf_counter() - started)
    return round(statistics.median(spent) * 1000, 2)


def replica_in_process(settings: dict[str, Any], model: str, path: str, headers: dict[str, str], body: bytes,
                       count: int) -> float:
    """p50 of the replica's `forward` in this process: inferd's app and the shim, without Ray."""
    from inferd.deploy.ray.replica import Forwarded, ModelServer

    async def run() -> float:
        replica = ModelServer.__new__(ModelServer)
        await ModelServer.__init__(replica, settings, [model])
        request = Forwarded("POST", path, b"", [(k.lower().encode(), v.encode()) for k, v in headers.items()], body)
        loop = asyncio.get_running_loop()
        for _ in range(WARMUP):
            await replica.forward(request)
        spent = []
        for _ in range(count):
            started = loop.time()
            answer = await replica.forward(request)
            spent.append(loop.time() - started)
        assert answer.status == 200, answer.body[:200]
        await replica.__del__()
        return round(statistics.median(spent) * 1000, 2)

    return asyncio.run(run())


def _caller(handle: Any, forwarded: Any) -> Callable[[], object]:
    return lambda: handle.forward.remote(forwarded).result()


def over_ray(app: str, model: str, url: str, path: str, headers: dict[str, str], body: bytes,
             count: int) -> dict[str, float]:
    """p50s of the hops on a running application (`url` is Serve's HTTP proxy)."""
    from ray import serve

    from inferd.deploy.ray.replica import Forwarded

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    request, health = Forwarded("POST", path, b"", raw_headers, body), Forwarded("GET", "/v2/health/ready", b"", [], b"")
    by_reference = serve.get_deployment_handle(model, app_name=app)
    direct = by_reference.options(_by_reference=False)
    found = {}
    with httpx.Client(timeout=60) as http:
        found["through_proxy_and_router"] = _p50_ms(
            lambda: http.post(url + path, content=body, headers=headers).raise_for_status(), count)
    for name, handle in (("by_reference", by_reference), ("grpc", direct)):
        for suffix, forwarded in (("", request), ("_bodiless", health)):
            found[f"handle_{name}{suffix}"] = _p50_ms(_caller(handle, forwarded), count)
    return found
