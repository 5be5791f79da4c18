"""CORS, for browser UIs served from another origin: Starlette's middleware with inferd's choices made."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

# Headers a browser script may read from an answer: the request id to report, and what a 401 or 429 asks of it.
EXPOSED_HEADERS = ("X-Request-ID", "Retry-After", "WWW-Authenticate")


class CorsMiddleware(CORSMiddleware):
    """Any method and header from the given origins; the server's own headers readable by their scripts."""

    def __init__(self, app: ASGIApp, allow_origins: Sequence[str]) -> None:
        super().__init__(app, allow_origins=allow_origins, allow_methods=["*"], allow_headers=["*"],
                         expose_headers=EXPOSED_HEADERS)
