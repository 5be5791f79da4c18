"""gRPC's standard health service (`grpc.health.v1.Health`), which Kubernetes probes and grpc_health_probe call.

Written here rather than taken from grpcio-health-checking (which provides the messages) because its Watch
streams never end: the server's drain would wait its whole grace period for every watcher. Here a shutdown
tells each watcher NOT_SERVING and then ends its stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HEALTH_SERVICE = "grpc.health.v1.Health"


class HealthService(health_pb2_grpc.HealthServicer):
    """NOT_SERVING until `serving`, and for good from `shut_down`, for each of `services` ("" is the whole server).

    So a load balancer stops sending work before the drain.
    """

    def __init__(self, services: tuple[str, ...]) -> None:
        self._services = services
        self._serving = self._closing = False
        self._changed = asyncio.Event()

    def _status(self, service: str) -> int | None:
        if service not in self._services:
            return None
        serving = self._serving and not self._closing
        return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING

    def _announce(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def serving(self) -> None:
        self._serving = True
        self._announce()

    def shut_down(self) -> None:
        self._closing = True
        self._announce()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        status = self._status(request.service)
        if status is None:
            known = " or ".join(map(repr, self._services))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r}; ask for {known}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        """Each change of status, starting with the current one; SERVICE_UNKNOWN for a name it does not know."""
        last = None
        while True:
            changed = self._changed
            status = self._status(request.service)
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN if status is None else status
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if self._closing:
                return
            await changed.wait()
