"""The grpc.aio server: the V2 servicer and the standard health service registered, the API key checked.

Decisions worth knowing:

* Health calls (ServerLive, ServerReady, ModelReady, and gRPC's standard `grpc.health.v1.Health`) are open;
  every other call needs the API key, when the server has one, as `authorization: Bearer <key>` or
  `x-api-key` metadata.
* A message that does not parse is INVALID_ARGUMENT with the parser's reason, not grpcio's UNKNOWN: the
  methods are registered from the proto's descriptor, as the generated code does, with a deserializer that
  hands the handler the failure instead of raising.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from inferd.errors import Unauthorized
from inferd.serve.access import UNAUTHORIZED, presents_key
from inferd.serve.v2.grpc.converters import parse
from inferd.serve.v2.grpc.health import HEALTH_SERVICE, HealthService
from inferd.serve.v2.grpc.servicer import SERVICE, InferenceService

OPEN_METHODS = frozenset([*(f"/{SERVICE}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady")),
                          f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"])


class _ApiKey(grpc.aio.ServerInterceptor):
    """Refuse every call but the health ones without the key, before the request is even decoded."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        metadata = [(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in details.invocation_metadata or ()]
        if details.method in OPEN_METHODS or presents_key(metadata, self._key):
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, Unauthorized(UNAUTHORIZED).message)


def _handlers(service: InferenceService) -> grpc.GenericRpcHandler:
    """Every method of the proto's service, bound to `service` (whose base class answers UNIMPLEMENTED for the
    ones inferd does not serve: CUDA shared memory, trace and log settings)."""
    descriptor = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers = {}
    for method in descriptor.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        reply_class = message_factory.GetMessageClass(method.output_type)
        make = grpc.stream_stream_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(getattr(service, method.name), request_deserializer=partial(parse, request_class),
                                     response_serializer=reply_class.SerializeToString)
    return grpc.method_handlers_generic_handler(descriptor.full_name, handlers)


@dataclass(frozen=True)
class GrpcFace:
    """A started gRPC server, the port it bound, and its standard health service."""

    server: grpc.aio.Server
    port: int
    health: HealthService

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING to health checks first, so load balancers stop sending; then calls in flight finish."""
        self.health.shut_down()
        await self.server.stop(grace_s)


async def start(service: InferenceService, host: str, port: int, *, api_key: str | None,
                max_message_bytes: int, max_connections: int, handshake_timeout_s: float) -> GrpcFace:
    """Serve on host:port (0 picks a free port); health reports on the whole server ("") and the V2 service.

    SO_REUSEPORT is off (grpcio turns it on by default): a second server on the same port must fail, not
    silently share the port's connections with the first. The HTTP face's guards hold here too: past
    `max_connections` a connection is closed at once, and one that has not finished its HTTP/2 handshake within
    `handshake_timeout_s` (grpcio waits 120 s) is closed.
    """
    server = grpc.aio.server(
        interceptors=[_ApiKey(api_key)] if api_key else None,
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0), ("grpc.max_allowed_incoming_connections", max_connections),
                 ("grpc.server_handshake_timeout_ms", round(handshake_timeout_s * 1000))],
    )
    server.add_generic_rpc_handlers((_handlers(service),))
    health = HealthService(("", SERVICE))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}: another server is using it, or it is not "
                      "allowed; choose another with --grpc-port")
    await server.start()
    return GrpcFace(server, bound, health)
