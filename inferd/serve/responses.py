"""The one shape of every error the server writes: `{"error": "..."}`, with its status and any headers.

Its own module, so that every layer can answer an error the same way: the error handlers, the middlewares
that refuse a request before any route runs, and the request decoding around them.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
