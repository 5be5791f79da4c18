"""The FastAPI application: the repository, the routes and the mapping of errors to JSON answers.

Every error a client can cause becomes a 4xx with `{"error": "..."}`; an
unexpected failure is logged and answered with a 500 that leaks no internals,
and the process keeps serving either way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from inferd import __version__
from inferd.errors import InferdError, NotReady, Overloaded
from inferd.serve import rest
from inferd.serve.repository import ModelRepository
from inferd.serve.settings import ServerSettings

log = logging.getLogger("inferd.serve")


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        repository = ModelRepository(settings.repository, compute_units=settings.compute_units,
                                     precision=settings.precision, max_in_flight=settings.max_in_flight)
        for name, error in repository.load_all().items():
            log.error("could not load %s: %s", name, error)
        app.state.repository = repository
        try:
            yield
        finally:
            repository.close()

    app = FastAPI(title="inferd", version=__version__, lifespan=lifespan,
                  description="Model inference server: simple REST and the Open Inference Protocol (V2).")
    app.state.settings = settings
    app.include_router(rest.router)
    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(InferdError)
    async def inferd_error(request: Request, exc: InferdError) -> JSONResponse:
        headers = {}
        if isinstance(exc, (Overloaded, NotReady)):
            headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
        return JSONResponse({"error": exc.message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": describe_validation_errors(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the server logged the details"}, status_code=500)


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
