"""The V2 servicer: each RPC converts its message, calls what the HTTP face calls, and converts the answer back.

An error keeps its message and maps to a gRPC status (400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 NOT_FOUND, 413 RESOURCE_EXHAUSTED, 429 and 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED).

Decisions worth knowing:

* It runs on the HTTP server's event loop, so both faces share the batch queues: a gRPC and an HTTP request
  can meet in one batch.
* Every call carries an `x-request-id` (the client's, when it sends a safe one, else a new one) back in its
  trailing metadata and in the access log, as X-Request-ID does over HTTP.
* The client's gRPC deadline becomes the request's queue deadline unless the request's `timeout` parameter
  sets one; a client that cancels leaves the queue as an HTTP client that disconnects does.
* ModelStreamInfer runs every request of a stream as it arrives and answers in completion order; a failed
  request answers with `error_message` and the stream goes on, as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from inferd.errors import InferdError, ModelNotFound, NotReady, Overloaded
from inferd.serve import log_settings as logs
from inferd.serve.access import REQUEST_ID_KEY, access_log, safe_request_id, write_access_line
from inferd.serve.metrics.series import ServerMetrics
from inferd.serve.repository import ModelRepository
from inferd.serve.v2.grpc.converters import Corrupt, parameters_of, request_from_grpc, response_to_grpc, stream_error
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

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND, 413: grpc.StatusCode.RESOURCE_EXHAUSTED, 429: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Request = TypeVar("Request")
Reply = TypeVar("Reply")


def _handled(method: Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]],
             ) -> Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Reply]]:
    """Turn InferdError into its gRPC status and anything else into INTERNAL; count and log every call.

    A refusal for load (429, 503) carries `retry-after` (seconds) in its trailing metadata, as HTTP's header.
    """

    async def call(self: InferenceService, request: Request, context: grpc.aio.ServicerContext) -> Reply:
        started, started_at = time.perf_counter(), time.time()
        status, message = 200, ""
        request_id = _request_id(context)
        trailer: tuple[tuple[str, str], ...] = ((REQUEST_ID_KEY, request_id),)
        context.set_trailing_metadata(trailer)
        try:
            if isinstance(request, Corrupt):
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
        parameters = parameters_of(request.parameters)
        await self.repository.load(request.model_name, serving_overrides(request.model_name, parameters))
        return pb.RepositoryModelLoadResponse()

    @_handled
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context: Any
                                    ) -> pb.RepositoryModelUnloadResponse:
        check_unload_parameters(parameters_of(request.parameters))
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # -- logging ------------------------------------------------------------------------------

    @_handled
    async def LogSettings(self, request: pb.LogSettingsRequest, context: Any) -> pb.LogSettingsResponse:
        changes = parameters_of(request.settings)
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
                if isinstance(request, Corrupt):
                    request.refuse()
                message = pb.ModelStreamInferResponse(infer_response=await self._infer(request, context))
            except Exception as exc:
                status, error = _outcome(exc, "ModelStreamInfer")
                message = stream_error(request, error)
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
        """Protobuf to the shared request, the data plane, and back: the three steps of HTTP's `infer`."""
        entry = self.repository.get(request.model_name, request.model_version or None)
        entry.admit()
        with entry.measured() as phases:
            with phases.input():
                decoded = request_from_grpc(request, self.shared_memory)
            response = await run_inference(entry, decoded, phases=phases, max_image_pixels=self.max_image_pixels,
                                           timeout_s=context.time_remaining())
            with phases.output():
                return response_to_grpc(response, self.shared_memory)

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
    given = next((v for k, v in context.invocation_metadata() or () if k == REQUEST_ID_KEY), None)
    return safe_request_id(given.encode() if isinstance(given, str) else given)
