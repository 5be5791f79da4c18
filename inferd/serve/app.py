"""The FastAPI application: two protocol faces over one model repository.

Every error a client can cause becomes a 4xx with `{"error": "..."}`; an
unexpected failure is logged and answered with a 500 that leaks no internals,
and the process keeps serving either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferd.errors import InferdError, NotReady, Overloaded
from inferd.serve import docs, openapi, rest
from inferd.serve.log_settings import LogSettings
from inferd.serve.methods import method_not_allowed
from inferd.serve.metrics.series import ServerMetrics, metrics_router
from inferd.serve.middleware.api_key import OPEN_PATHS, ApiKeyMiddleware
from inferd.serve.middleware.body_limit import BodyLimitMiddleware
from inferd.serve.middleware.cors import CorsMiddleware
from inferd.serve.middleware.encoding import ContentEncodingMiddleware
from inferd.serve.middleware.head import HeadMiddleware
from inferd.serve.middleware.request_id import RequestIdMiddleware
from inferd.serve.repository import ModelRepository
from inferd.serve.responses import json_error
from inferd.serve.settings import ServerSettings
from inferd.serve.v2 import http as v2
from inferd.serve.v2.shared_memory import SystemSharedMemory
from inferd.version import __version__

if TYPE_CHECKING:
    from inferd.serve.v2.grpc.server import GrpcFace

log = logging.getLogger("inferd.serve")


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    metrics = ServerMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repository = ModelRepository(settings.repository, defaults=settings.models, metrics=metrics,
                                     max_memory_bytes=settings.max_memory_bytes)
        app.state.repository = repository
        app.state.log_settings.install()
        grpc_face = (await _start_grpc(app, repository, settings, settings.grpc_port, metrics)
                     if settings.grpc_port is not None else None)
        app.state.grpc_face = grpc_face
        await _initial_load(repository, settings)
        app.state.ready = not app.state.draining  # a SIGTERM while loading: never ready
        if grpc_face is not None and app.state.ready:
            grpc_face.health.serving()
        poller = (asyncio.create_task(repository.poll_forever(settings.poll_interval_s))
                  if settings.model_control == "poll" else None)
        try:
            yield
        finally:
            begin_drain(app)
            if poller:
                poller.cancel()
            if app.state.grpc_stopped is not None:
                await app.state.grpc_stopped
            await repository.close()
            app.state.shared_memory.close()
            app.state.log_settings.uninstall()

    app = FastAPI(
        title="inferd", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Model inference server: a simple REST face for images and the Open Inference Protocol (V2).",
    )
    app.state.settings = settings
    app.state.ready = app.state.draining = False
    app.state.grpc_face = app.state.grpc_stopped = None
    app.state.shared_memory = SystemSharedMemory(settings.allow_shared_memory, max_read_bytes=settings.max_body_bytes)
    app.state.log_settings = LogSettings()
    app.include_router(rest.router)
    app.include_router(v2.router)
    app.router.routes[:0] = v2.fast_infer_routes()
    docs.install(app)
    openapi.install(app, settings, open_paths=OPEN_PATHS)
    install(app, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes,
            cors_origins=settings.cors_origins, metrics=metrics, log_requests=settings.access_log,
            body_timeout_s=settings.body_timeout_s)
    _install_error_handlers(app)
    return app


def begin_drain(app: FastAPI) -> None:
    """What SIGTERM does at once (and the shutdown, when no signal did): readiness goes off on every face (HTTP 503,
    gRPC NOT_SERVING), and the gRPC face stops taking calls and gives those it took `drain_timeout_s` to finish.

    The HTTP face stops taking connections in uvicorn's shutdown, which waits as long for its requests.
    """
    state = app.state
    if state.draining:
        return
    state.draining, state.ready = True, False
    if state.grpc_face is not None:
        state.grpc_stopped = asyncio.ensure_future(state.grpc_face.stop(state.settings.drain_timeout_s))


def install(app: FastAPI, *, api_key: str | None, max_body_bytes: int, cors_origins: list[str] | None,
            metrics: ServerMetrics, log_requests: bool = True, body_timeout_s: float = 60.0) -> None:
    """What an app serves besides its faces: `GET /metrics`, and the middlewares around everything.

    Outermost first: request id and log, CORS, body limit, API key, content
    encoding, HEAD. CORS sits outside the API key and the body limit because
    browsers send preflights without credentials, and need CORS headers on a 401
    or 413 to read it. Public so that an app of one's own (a test's, with no
    models) gets the same.
    """
    app.state.metrics = metrics
    app.include_router(metrics_router(metrics))
    # Starlette puts each added middleware outside the ones before it: add innermost first.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(ContentEncodingMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=api_key, open_paths=(*OPEN_PATHS, *docs.OPEN_PATHS))
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    if cors_origins:
        app.add_middleware(CorsMiddleware, allow_origins=cors_origins)
    app.add_middleware(RequestIdMiddleware, metrics=metrics, log_requests=log_requests)


async def _start_grpc(app: FastAPI, repository: ModelRepository, settings: ServerSettings, port: int,
                      metrics: ServerMetrics) -> GrpcFace:
    """The gRPC face, on this event loop so that both faces share the batch queues; its port is in app.state.

    Imported here, so that grpcio is needed only by servers that speak gRPC.
    """
    from inferd.serve.v2.grpc import server
    from inferd.serve.v2.grpc.servicer import InferenceService

    service = InferenceService(
        repository, app.state.shared_memory, ready=lambda: bool(app.state.ready), metrics=metrics,
        max_image_pixels=settings.max_image_pixels, log_requests=settings.access_log,
        log_settings=app.state.log_settings)
    face = await server.start(
        service, settings.host, port, api_key=settings.api_key, max_message_bytes=settings.max_body_bytes,
        max_connections=settings.max_connections, handshake_timeout_s=settings.head_timeout_s)
    app.state.grpc_port = face.port
    log.info("serving the Open Inference Protocol over gRPC on %s:%d", settings.host, face.port)
    return face


async def _initial_load(repository: ModelRepository, settings: ServerSettings) -> None:
    if settings.model_control == "explicit":
        for name in settings.load_models:
            try:
                await repository.load(name)
            except InferdError as exc:
                log.error("could not load %s: %s", name, exc.message)
        return
    for name, error in (await repository.load_all()).items():
        log.error("could not load %s: %s", name, error)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InferdError)
    async def inferd_error(request: Request, exc: InferdError) -> JSONResponse:
        headers = {}
        if isinstance(exc, Overloaded | NotReady):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return json_error(exc.status_code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(400, describe_validation_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is listed at /docs"
        elif exc.status_code == 405:
            return method_not_allowed(request)
        return json_error(exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_error(500, "internal error; the server logged the details")


def describe_validation_errors(exc: RequestValidationError) -> str:
    """Turn pydantic's error list into one sentence a curl user can act on."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ())]
        where, field = (location[0], location[-1]) if location else ("request", "")
        if error.get("type") == "missing" and where == "body":
            parts.append(f"missing multipart field {field!r}: send the file as -F {field}=@photo.jpg")
        elif where == "body" and len(location) == 1:
            parts.append("the body must be multipart/form-data with the image file (curl -F image=@photo.jpg)")
        else:
            parts.append(f"{where} {field!r}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
