"""Request ids, the access log and the per-request metrics of the HTTP face."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.serve.access import REQUEST_ID_KEY, access_log, safe_request_id, write_access_line
from inferd.serve.metrics.series import ServerMetrics
from inferd.serve.middleware.scope import header

UNMATCHED = "unmatched"
REQUEST_ID_HEADER = REQUEST_ID_KEY.encode()


@dataclass
class _Response:
    status: int = 0
    bytes_out: int = 0


class RequestIdMiddleware:
    """Tags each request with an id that ties client reports, the access log and app logs together; logs and counts it.

    The id is in `request.state.request_id` and the `X-Request-ID` response header.
    The request is labelled with the `model` and `version` path parameters of its
    route; handlers that resolve a model the path does not name (`POST /predict`)
    set `request.state.model` and `request.state.model_version` instead.
    The access log line costs event-loop time on every request, so
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
        request_id = safe_request_id(header(scope, REQUEST_ID_HEADER))
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
        route, params = _route_of(scope)
        state: dict[str, Any] = scope.get("state", {})
        model = str(state.get("model") or params.get("model") or "")
        version = str(state.get("model_version") or params.get("version") or "")
        if self.metrics is not None:
            # A bounded label: the route's template, never the raw path a client can vary at will.
            template = getattr(route, "path", None)
            self.metrics.observe_request(model, version, template if isinstance(template, str) else UNMATCHED,
                                         response.status, seconds)
        if not (self.log_requests and access_log.isEnabledFor(logging.INFO)):
            return
        declared = header(scope, b"content-length")
        client = scope.get("client")
        write_access_line(
            started_at, request_id, scope["method"], scope["path"], response.status, seconds,
            client[0] if client else None, model,
            bytes_in=int(declared) if declared is not None and declared.isdigit() else None,
            bytes_out=response.bytes_out,
        )


def _route_of(scope: Scope) -> tuple[object | None, Mapping[str, Any]]:
    """The route that answered the request, and its path parameters.

    Requests a middleware answered (401, 413) never reached the router, and those a
    middleware rewrote (HEAD, an inflated body) reached it with a copy of the scope:
    match them here, to count and label them as their route would.
    """
    if "route" in scope:
        return scope["route"], scope.get("path_params", {})
    router = getattr(scope.get("app"), "router", None)
    for route in getattr(router, "routes", ()):
        match, child = route.matches(dict(scope))
        if match is not Match.NONE:
            return route, child.get("path_params", {})
    return None, {}
