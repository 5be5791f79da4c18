"""The API key on the HTTP face: every path but the open ones needs it.

`/metrics` is not open: it lists the models and their traffic. Prometheus sends the key (`authorization` in its
scrape config), or scrapes `--metrics-port`, which serves only the metrics, without the key, on a port that can
stay private.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.serve.access import UNAUTHORIZED, presents_key
from inferd.serve.responses import json_error

OPEN_PATHS = ("/health", "/v2/health/live", "/v2/health/ready", "/docs", "/openapi.json", "/redoc")


class ApiKeyMiddleware:
    """Requires the API key on every path but the open ones (health probes and docs)."""

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


def _route_path(scope: Scope) -> str:
    """The path the app routes on: without the root path a proxy mounts the server under."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path
