"""The Open Inference Protocol over gRPC: KServe V2's GRPCInferenceService, as tritonclient.grpc speaks it.

The messages and service stubs are the ones tritonclient ships (`tritonclient.grpc.service_pb2`), generated
from the proto Triton serves, so the wire format cannot drift. A request becomes the dict the HTTP face parses
from JSON and passes the same codec checks, `run_inference` and repository; only the envelope differs. An
error keeps its message and maps to a gRPC status (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 429 and 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED).

Decisions worth knowing:

* It runs on the HTTP server's event loop, so both faces share the batch queues: a gRPC and an HTTP request
  can meet in one batch.
* Every call carries an `x-request-id` (the client's, when it sends a safe one, else a new one) back in its
  trailing metadata and in the access log, as X-Request-ID does over HTTP.
* Health calls (ServerLive, ServerReady, ModelReady, and gRPC's standard `grpc.health.v1.Health` that
  Kubernetes probes and grpc_health_probe call) are open; every other call needs the API key, when the
  server has one, as `authorization: Bearer <key>` or `x-api-key` metadata. The standard health service
  answers NOT_SERVING until the models are loaded and again once shutdown begins, so a load balancer
  stops sending work before the drain.
* The client's gRPC deadline becomes the request's queue deadline unless the request's `timeout` parameter
  sets one; a client that cancels leaves the queue as an HTTP client that disconnects does.
* ModelStreamInfer runs every request of a stream as it arrives and answers in completion order; a failed
  request answers with `error_message` and the stream goes on, as Triton does.
* A message that does not parse is INVALID_ARGUMENT with the parser's reason, not grpcio's UNKNOWN: the
  methods are registered from the proto's descriptor, as the generated code does, with a deserializer that
  hands the handler the failure instead of raising.
* Outputs always go out as `raw_output_contents`, as Triton sends them; an output written to shared memory
  keeps its place in that list with empty bytes, since tritonclient finds each output's bytes by position.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

# The server never forks while gRPC runs, except to probe the machine with a subprocess; grpcio's fork
# handlers would only log a warning about the other threads each time.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from inferd.errors import InferdError, InvalidInput, ModelNotFound, NotReady, Overloaded, Unauthorized
from inferd.serve import log_settings as logs
from inferd.serve.metrics import ServerMetrics
from inferd.serve.middleware import UNAUTHORIZED, access_log, presents_key, safe_request_id, write_access_line
from inferd.serve.repository import ModelRepository
from inferd.serve.v2.codec import (
    InferResponse,
    SharedMemory,
    decode_parsed_request,
    encode_raw_outputs,
)
from inferd.serve.v2.inference import run_inference
from inferd.serve.v2.metadata import (
    check_unload_parameters,
    model_metadata,
    server_metadata,
    serving_overrides,
    statistics,
    triton_config,
)
from inferd.serve.v2.shared_memory import SystemSharedMemory

log = logging.getLogger("inferd.serve")

SERVICE = "inference.GRPCInferenceService"
HEALTH_SERVICE = "grpc.health.v1.Health"
OPEN_METHODS = frozenset([*(f"/{SERVICE}/{m}" for m in ("ServerLive", "ServerReady", "ModelReady")),
                          f"/{HEALTH_SERVICE}/Check", f"/{HEALTH_SERVICE}/Watch"])
# What the standard health service reports on: the whole server ("") and the inference service by name.
_HEALTH_NAMES = ("", SERVICE)

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed `contents` fields per datatype; FP16 and BF16 have none and travel as raw bytes only.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}

Request = TypeVar("Request")
Reply = TypeVar("Reply")


@dataclass(frozen=True)
class _Corrupt:
    """What the deserializer hands over for bytes that are not the method's request message."""

    message_type: str
    reason: str

    def refuse(self) -> None:
        raise InvalidInput(f"the request is not a valid {self.message_type} message ({self.reason}); send the "
                           "protobuf message the Open Inference Protocol's gRPC service defines")


def _parse(message_class: type[Message], data: bytes) -> Message | _Corrupt:
    try:
        return message_class.FromString(data)
    except DecodeError as exc:
        return _Corrupt(message_class.DESCRIPTOR.full_name, str(exc))


def _handled(method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]],
             ) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]:
    """Turn InferdError into its gRPC status and anything else into INTERNAL; count and log every call.

    A refusal for load (429, 503) carries `retry-after` (seconds) in its trailing metadata, as HTTP's header.
    """

    async def call(self: InferenceService, request: Request, context: grpc.aio.ServicerContext) -> Reply:
        started, started_at = time.perf_counter(), time.time()
        status, message = 200, ""
        request_id = _request_id(context)
        trailer: tuple[tuple[str, str], ...] = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailer)
        try:
            if isinstance(request, _Corrupt):
                request.refuse()
            return await method(self, request, context)
        except asyncio.CancelledError:
            status = 499  # the client cancelled or its deadline passed: nobody takes an answer
            raise
        except Exception as exc:
            status, message = _outcome(exc, method.__name__)
            if isinstance(exc, Overloaded | NotReady):
                trailer += (("retry-after", str(max(1, round(exc.retry_after_s)))),)
        finally:
            self._record(method.__name__, request, status, time.perf_counter() - started, started_at, context,
                         request_id)
        code = _STATUS.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)
        await context.abort(code, message, trailing_metadata=trailer)
        raise AssertionError("context.abort returns only by raising")

    call.__name__ = method.__name__
    return call


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """`ready` reports whether the server has finished loading, as GET /v2/health/ready does."""

    def __init__(self, repository: ModelRepository, shared_memory: SystemSharedMemory, *, ready: Callable[[], bool],
                 metrics: ServerMetrics | None, max_image_pixels: int, log_requests: bool,
                 log_settings: logs.LogSettings) -> None:
        self.repository = repository
        self.shared_memory = shared_memory
        self.log_settings = log_settings
        self.ready = ready
        self.metrics = metrics
        self.max_image_pixels = max_image_pixels
        self.log_requests = log_requests
        self.health = HealthService()

    # -- health and metadata ------------------------------------------------------------------

    @_handled
    async def ServerLive(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_handled
    async def ServerReady(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready())

    @_handled
    async def ModelReady(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        try:
            self.repository.get(request.name, request.version or None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_handled
    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**server_metadata(shared_memory=self.shared_memory.enabled))

    @_handled
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        described = model_metadata(self.repository, self.repository.get(request.name, request.version or None))
        return json_format.ParseDict(described, pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_handled
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        entry = self.repository.get(request.name, request.version or None)
        config = json_format.ParseDict(triton_config(entry), model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @_handled
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        stats = statistics(self.repository, request.name or None, request.version or None)
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse(), ignore_unknown_fields=True)

    # -- repository ---------------------------------------------------------------------------

    @_handled
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        rows = self.repository.index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @_handled
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context: Any
                                  ) -> pb.RepositoryModelLoadResponse:
        parameters = _parameters(request.parameters)
        await self.repository.load(request.model_name, serving_overrides(request.model_name, parameters))
        return pb.RepositoryModelLoadResponse()

    @_handled
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any
                                    ) -> pb.RepositoryModelUnloadResponse:
        check_unload_parameters(_parameters(request.parameters))
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- logging ------------------------------------------------------------------------------

    @_handled
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        changes = _parameters(request.settings)
        settings = self.log_settings.update(changes) if changes else self.log_settings.as_triton()
        response = pb.LogSettingsResponse()
        for name, value in settings.items():
            kind = "bool_param" if isinstance(value, bool) else "uint32_param" if isinstance(value, int) else "string_param"
            setattr(response.settings[name], kind, value)
        return response

    # -- system shared memory -----------------------------------------------------------------

    @_handled
    async def SystemSharedMemoryStatus(self, request: pb.SystemSharedMemoryStatusRequest, context: Any
                                       ) -> pb.SystemSharedMemoryStatusResponse:
        regions = self.shared_memory.status(request.name or None)
        return pb.SystemSharedMemoryStatusResponse(
            regions={r["name"]: pb.SystemSharedMemoryStatusResponse.RegionStatus(**r) for r in regions})

    @_handled
    async def SystemSharedMemoryRegister(self, request: pb.SystemSharedMemoryRegisterRequest, context: Any
                                         ) -> pb.SystemSharedMemoryRegisterResponse:
        self.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_handled
    async def SystemSharedMemoryUnregister(self, request: pb.SystemSharedMemoryUnregisterRequest, context: Any
                                           ) -> pb.SystemSharedMemoryUnregisterResponse:
        self.shared_memory.unregister(request.name or None)
        return pb.SystemSharedMemoryUnregisterResponse()

    # -- inference ----------------------------------------------------------------------------

    @_handled
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ModelInferResponse:
        return await self._infer(request, context)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
                               ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request of the stream runs as soon as it arrives, beside the others (so they can share a batch);
        answers go back as they finish, and a failed request answers `error_message` without ending the stream."""
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()
        stream_id = _request_id(context)

        async def answer(request: pb.ModelInferRequest) -> None:
            started, started_at, status = time.perf_counter(), time.time(), 200
            try:
                if isinstance(request, _Corrupt):
                    request.refuse()
                message = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except Exception as exc:
                status, error = _outcome(exc, "ModelStreamInfer")
                message = _stream_error(request, error)
            self._record("ModelStreamInfer", request, status, time.perf_counter() - started, started_at, context,
                         getattr(request, "id", "") or stream_id)
            answers.put_nowait(message)

        async def read() -> None:
            async for request in requests:
                task = asyncio.ensure_future(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.wait(set(running))
            answers.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (message := await answers.get()) is not None:
                yield message
        finally:
            reader.cancel()
            for task in running:
                task.cancel()

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        entry = self.repository.get(request.model_name, request.model_version or None)
        entry.batcher.admit()
        header, binary = _as_v2(request)
        shared_memory = self.shared_memory
        decoded = decode_parsed_request(header, memoryview(binary), shared_memory=shared_memory)
        remaining = context.time_remaining()
        response = await run_inference(entry, decoded, max_image_pixels=self.max_image_pixels,
                                       timeout_s=remaining)
        return _infer_response(response, shared_memory)

    # -- bookkeeping --------------------------------------------------------------------------

    def _record(self, method: str, request: Any, status: int, seconds: float, started_at: float,
                context: grpc.aio.ServicerContext, request_id: str) -> None:
        model = getattr(request, "model_name", None) or getattr(request, "name", "") or ""
        version = getattr(request, "model_version", None) or getattr(request, "version", "") or ""
        if self.metrics is not None:
            self.metrics.observe_request(model, version, f"grpc {method}", status, seconds)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            write_access_line(started_at, request_id, "gRPC", f"/{SERVICE}/{method}", status, seconds, context.peer(),
                              model)


def _outcome(exc: Exception, method: str) -> tuple[int, str]:
    """The HTTP-equivalent status and the message for a failed call: the user's error, or an internal one logged."""
    if isinstance(exc, InferdError):
        return exc.status_code, exc.message
    log.exception("unexpected error in gRPC %s", method, exc_info=exc)
    return 500, "internal error; the server logged the details"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    given = next((v for k, v in context.invocation_metadata() or () if k == "x-request-id"), None)
    return safe_request_id(given.encode() if isinstance(given, str) else given)


def _parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(value, kind)
    return values


def _set_parameters(target: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, float):
            target[key].double_param = value
        else:
            target[key].string_param = str(value)


def _as_v2(request: pb.ModelInferRequest) -> tuple[dict[str, Any], bytes]:
    """The request as the HTTP face's JSON header plus binary part.

    Raw contents become the binary part (in input order, as `binary_data_size`); typed contents become JSON
    `data`, except BYTES, whose elements are bytes rather than text and so go to the binary part too.
    """
    raw = list(request.raw_input_contents)
    chunks: list[bytes] = []
    inputs: list[dict[str, Any]] = []
    for tensor in request.inputs:
        parameters = _parameters(tensor.parameters)
        item: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                                "parameters": parameters}
        field = _CONTENTS.get(tensor.datatype)
        if tensor.HasField("contents") and field is None:
            raise InvalidInput(f"input {tensor.name!r}: {tensor.datatype} has no typed contents field; send its "
                               "bytes in raw_input_contents")
        typed = list(getattr(tensor.contents, field)) if field and tensor.HasField("contents") else None
        if "shared_memory_region" in parameters or "shared_memory_byte_size" in parameters:
            if typed:
                item["data"] = typed  # the codec refuses a tensor sent two ways, with the message for it
        elif raw:
            if typed:
                raise InvalidInput(f"input {tensor.name!r} has contents while the request uses raw_input_contents; "
                                   "send every input's data one way")
            chunk = raw.pop(0)
            parameters["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        elif typed is not None and tensor.datatype == "BYTES":
            chunk = b"".join(len(v).to_bytes(4, "little") + v for v in typed)
            parameters["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        elif typed is not None:
            item["data"] = typed
        inputs.append(item)
    if raw:
        raise InvalidInput(f"raw_input_contents has {len(raw)} more entries than the inputs that take data; "
                           "send one entry per input, in the inputs' order")
    outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in request.outputs]
    header = {"id": request.id or None, "inputs": inputs, "outputs": outputs or None,
              "parameters": _parameters(request.parameters)}
    return header, b"".join(chunks)


def _stream_error(request: pb.ModelInferRequest | _Corrupt, message: str) -> pb.ModelStreamInferResponse:
    """The failed request's id and model go back with the message, so a client can tell which one failed."""
    if isinstance(request, _Corrupt):
        return pb.ModelStreamInferResponse(error_message=message)
    return pb.ModelStreamInferResponse(error_message=message, infer_response=pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id))


def _infer_response(response: InferResponse, shared_memory: SharedMemory) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version or "",
                                    id=response.id or "")
    for tensor, chunk in encode_raw_outputs(response, shared_memory=shared_memory):
        output = message.outputs.add(name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"])
        _set_parameters(output.parameters, tensor.get("parameters", {}))
        message.raw_output_contents.append(b"" if chunk is None else bytes(chunk))
    return message


class HealthService(health_pb2_grpc.HealthServicer):
    """gRPC's standard health service: NOT_SERVING until `serving`, and for good from `shut_down`.

    Written here rather than taken from grpcio-health-checking (which provides
    the messages) because its Watch streams never end: the server's drain would
    wait its whole grace period for every watcher. Here a shutdown tells each
    watcher NOT_SERVING and then ends its stream.
    """

    def __init__(self) -> None:
        self._serving = self._closing = False
        self._changed = asyncio.Event()

    def _status(self, service: str) -> int | None:
        if service not in _HEALTH_NAMES:
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
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r}; ask for '' or {SERVICE!r}")
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
        handlers[method.name] = make(getattr(service, method.name), request_deserializer=partial(_parse, request_class),
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
                max_message_bytes: int) -> GrpcFace:
    """Serve on host:port (0 picks a free port).

    SO_REUSEPORT is off (grpcio turns it on by default): a second server on the same port must fail, not
    silently share the port's connections with the first.
    """
    server = grpc.aio.server(
        interceptors=[_ApiKey(api_key)] if api_key else None,
        options=[("grpc.max_receive_message_length", max_message_bytes), ("grpc.max_send_message_length", -1),
                 ("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((_handlers(service),))
    health_pb2_grpc.add_HealthServicer_to_server(service.health, server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}: another server is using it, or it is not "
                      "allowed; choose another with --grpc-port")
    await server.start()
    return GrpcFace(server, bound, service.health)
