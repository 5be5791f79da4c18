"""Request ids and the access log, the body limits (size and stalls), the API key, and `install` to put them in order.

These are pure ASGI middlewares rather than `BaseHTTPMiddleware`, which pipes every
response through a memory stream and adds latency to each prediction; these only
read headers and wrap `receive` and `send`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.serve.encoding import ContentEncodingMiddleware
from inferd.serve.metrics import ServerMetrics, metrics_router
from inferd.serve.responses import json_error

access_log = logging.getLogger("inferd.access")

OPEN_PATHS = ("/health", "/metrics", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/redoc")
UNMATCHED = "unmatched"
REQUEST_ID_HEADER = b"x-request-id"
UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"

# Client ids end up in logs and headers: anything else could forge log lines, so it is replaced.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_MODEL_PATH = re.compile(r"/(?:predict|embed|v2/models)/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy mounts the server under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


@dataclass
class _Response:
    status: int = 0
    bytes_out: int = 0


class RequestIdMiddleware:
    """Tags each request with an id that ties client reports, the access log and app logs together; logs and counts it.

    The id is in `request.state.request_id` and the `X-Request-ID` response header.
    Handlers that resolve a model the path does not name (`POST /predict`) may set
    `request.state.model` and `request.state.model_version` to label the request.
    The access log line costs about 65 us of event-loop time per request, so
    `log_requests=False` leaves it out for those who log at a proxy instead.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics | None = None, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, started_at = time.perf_counter(), time.time()
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        response = _Response()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response.status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            elif message["type"] == "http.response.body":
                response.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Starlette's outermost middleware answers 500 for an exception that got this far.
            response.status = response.status or 500
            raise
        finally:
            self._record(scope, request_id, response, time.perf_counter() - started, started_at)

    def _record(self, scope: Scope, request_id: str, response: _Response, seconds: float, started_at: float) -> None:
        model, version = _model_of(scope)
        if self.metrics is not None:
            self.metrics.observe_request(model, version, _route_template(scope), response.status, seconds)
        if not (self.log_requests and access_log.isEnabledFor(logging.INFO)):
            return
        declared = _header(scope, b"content-length")
        client = scope.get("client")
        write_access_line(
            started_at, request_id, scope["method"], scope["path"], response.status, seconds,
            client[0] if client else None, model,
            bytes_in=int(declared) if declared is not None and declared.isdigit() else None,
            bytes_out=response.bytes_out,
        )


def write_access_line(started_at: float, request_id: str, method: str, path: str, status: int, seconds: float,
                      client: str | None, model: str, **extra: object) -> None:
    """One JSON line on the inferd.access logger: the same fields whichever face (HTTP, gRPC) answered."""
    access_log.info(json.dumps({
        "ts": datetime.fromtimestamp(started_at, UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id, "method": method, "path": path, "status": status,
        "duration_ms": round(seconds * 1000, 3), "client": client, **extra, "model": model or None,
    }))


# Generated ids: 32 hex digits, a random half per process and a counter, unique without asking the
# kernel for randomness on every request as uuid4 does (1.5 % of the event loop's time at concurrency 8).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count()


def _request_id(scope: Scope) -> str:
    return safe_request_id(_header(scope, REQUEST_ID_HEADER))


def safe_request_id(given: bytes | None) -> str:
    """The client's X-Request-ID when it is a safe one, else a new id."""
    if given is not None and _VALID_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _model_of(scope: Scope) -> tuple[str, str]:
    state: dict[str, Any] = scope.get("state", {})
    match = _MODEL_PATH.match(_route_path(scope))
    path_model, path_version = (match["model"], match["version"] or "") if match else ("", "")
    return str(state.get("model") or path_model), str(state.get("model_version") or path_version)


def _route_template(scope: Scope) -> str:
    """A bounded label: the route's template, never the raw path a client can vary at will."""
    route = scope.get("route") or _matching_route(scope)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _matching_route(scope: Scope) -> object | None:
    """Requests a middleware answered (401, 413) never reached the router; match them here to count them under their route."""
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(dict(scope))
        if match is not Match.NONE:
            return route
    return None


class ApiKeyMiddleware:
    """Requires the API key on every path but the open ones (health probes, metrics, docs)."""

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: Sequence[str] = OPEN_PATHS) -> None:
        if api_key == "":
            raise ValueError("the API key is empty; pass None to turn authentication off")
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (self._key is None or scope["type"] not in ("http", "websocket")
                or _route_path(scope) in self._open_paths or presents_key(scope["headers"], self._key)):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation; the server answers 403
        else:
            await json_error(401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})(scope, receive, send)



def presents_key(headers: Iterable[tuple[bytes, bytes]], key: bytes) -> bool:
    """Whether lower-case headers (HTTP) or metadata (gRPC) carry the key as a Bearer token or X-API-Key."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key):
                return True
        elif name == b"x-api-key" and hmac.compare_digest(bytes(value), key):
            return True
    return False


class _BodyRefused(Exception):
    """Raised from `receive` to stop an app whose request body is over the limit or has stalled."""


class BodyLimitMiddleware:
    """Refuses bodies over the size limit, and bodies that stall.

    The size is checked from Content-Length before reading, or counted as a
    chunked body arrives. A client that stops sending mid-body would otherwise
    hold its connection, its task and what it sent so far for good (a slowloris),
    so each part of a body must arrive within `body_timeout_s` of the previous
    one; as with nginx's client_body_timeout, a slow upload that keeps moving is fine.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float = 60.0) -> None:
        if max_body_bytes <= 0:
            raise ValueError(f"max_body_bytes must be positive, got {max_body_bytes}")
        if body_timeout_s <= 0:
            raise ValueError(f"body_timeout_s must be positive, got {body_timeout_s}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _header(scope, b"content-length") if scope["type"] == "http" else None
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif declared is not None and not declared.isdigit():
            message = f"Content-Length must be a non-negative integer, got {declared.decode('latin-1')!r}"
            await json_error(400, message)(scope, receive, send)
        elif declared is not None and int(declared) > self.max_body_bytes:
            await json_error(413, self._too_large(f"{int(declared)} bytes"))(scope, receive, send)
        else:
            await self._guarded(scope, receive, send)

    def _too_large(self, size: str) -> str:
        return f"request body is {size}; the limit is {self.max_body_bytes} bytes (--max-body-bytes)"

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Once refused, the app's own answer (often a 400 for a broken body) gives way to the refusal unless it began."""
        received = 0
        started = False
        refusal: tuple[int, str] | None = None
        watch: _StallWatch | None = _StallWatch(self.body_timeout_s)

        async def guarded_receive() -> Message:
            nonlocal received, refusal, watch
            if refusal:
                raise _BodyRefused
            if watch is None:  # the body is in; the app now waits for a disconnect, which may rightly take long
                return await receive()
            watch.reading()
            try:
                message = await receive()
            except asyncio.CancelledError:
                if not watch.stalled():
                    raise
                refusal = (408, f"the request body stalled: nothing arrived for {self.body_timeout_s:g} s after "
                                f"{received} bytes (--body-timeout); send the whole body without pausing")
                raise _BodyRefused from None
            finally:
                watch.moved()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # only a chunked body, without Content-Length, gets here
                    refusal = (413, self._too_large(f"at least {received} bytes"))
                    raise _BodyRefused
            if not message.get("more_body", False):
                watch.close()
                watch = None
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refusal and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not refusal:
                raise
        finally:
            if watch is not None:
                watch.close()
        if refusal and not started:
            # The rest of the body may still come: close rather than read it as the next request.
            await json_error(*refusal, headers={"Connection": "close"})(scope, receive, send)


class _StallWatch:
    """Interrupts a body read that has waited `timeout_s` since the body last moved.

    One timer per request, moved along only when it comes due, rather than a
    timeout around every read: `asyncio.timeout` cost 7 to 9 us per chunk, this
    costs two clock reads. On a stall it cancels the request's task, whose only
    pending await is then the read; `stalled` tells that cancellation from one
    by anyone else, which must pass through.
    """

    def __init__(self, timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._timeout_s = timeout_s
        self._moved = self._loop.time()
        self._reading = self._fired = False
        self._timer = self._loop.call_at(self._moved + timeout_s, self._check)

    def _check(self) -> None:
        now, due = self._loop.time(), self._moved + self._timeout_s
        if self._reading and now >= due and self._task is not None:
            self._fired = True
            self._task.cancel()
        else:  # the body moved since the timer was set, or the app is busy between reads
            self._timer = self._loop.call_at(due if self._reading else now + self._timeout_s, self._check)

    def reading(self) -> None:
        self._moved = self._loop.time()
        self._reading = True

    def moved(self) -> None:
        self._reading = False
        self._moved = self._loop.time()

    def stalled(self) -> bool:
        """Whether a cancellation being handled is this watch's (and only its): then it is taken back."""
        return self._fired and self._task is not None and self._task.uncancel() == 0

    def close(self) -> None:
        self._timer.cancel()


class HeadMiddleware:
    """HEAD wherever GET is served, as HTTP asks of every server: the GET answer's status and headers, no body.

    Load balancers' health checks often use HEAD, and FastAPI's routes answer
    it with 405. The rewrite happens inside the access log, which records HEAD.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


def install(app: FastAPI, *, api_key: str | None, max_body_bytes: int, cors_origins: list[str] | None,
            metrics: ServerMetrics, log_requests: bool = True, body_timeout_s: float = 60.0) -> None:
    """Adds the middlewares, outermost first: request id and log, CORS, body limit, API key, content encoding, HEAD.

    CORS sits outside the API key and the body limit because browsers send
    preflights without credentials, and need CORS headers on a 401 or 413 to read it.
    """
    app.state.metrics = metrics
    app.include_router(metrics_router(metrics))
    # Starlette puts each added middleware outside the ones before it: add innermost first.
    app.add_middleware(HeadMiddleware)
    app.add_middleware(ContentEncodingMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["X-Request-ID", "Retry-After", "WWW-Authenticate"])
    app.add_middleware(RequestIdMiddleware, metrics=metrics, log_requests=log_requests)
