"""The one shape of every error the server writes: `{"error": "..."}`, with its status and any headers.

Its own module, so that every layer can answer an error the same way: the error handlers, the middlewares
that refuse a request before any route runs, and the request decoding around them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

# The API document's schema of that shape (the component every error response of every operation refers to).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {"error": {"type": "string", "description": "what was wrong and how to fix it"}},
}


def json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)
