"""What both faces (HTTP and gRPC) share about a caller: its request id, its access line, its API key.

The HTTP middlewares read these from ASGI headers and the gRPC face from call
metadata; keeping them here, apart from either transport, means a request is
identified, logged and authenticated the same way whichever face answered it.
"""

from __future__ import annotations

import hmac
import itertools
import json
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

access_log = logging.getLogger("inferd.access")

# The HTTP header and the gRPC metadata key that carry a client's request id, and the answer's.
REQUEST_ID_KEY = "x-request-id"

UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"

# Client ids end up in logs and headers: anything else could forge log lines, so it is replaced.
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

# Generated ids: 32 hex digits, a random half per process and a counter, unique without asking the
# kernel for randomness on every request as uuid4 does (1.5 % of the event loop's time at concurrency 8).
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count()


def safe_request_id(given: bytes | None) -> str:
    """The client's X-Request-ID when it is a safe one, else a new id."""
    if given is not None and _VALID_REQUEST_ID.fullmatch(given):
        return given.decode("ascii")
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def write_access_line(started_at: float, request_id: str, method: str, path: str, status: int, seconds: float,
                      client: str | None, model: str, **extra: object) -> None:
    """One JSON line on the inferd.access logger: the same fields whichever face (HTTP, gRPC) answered."""
    access_log.info(json.dumps({
        "ts": datetime.fromtimestamp(started_at, UTC).isoformat(timespec="milliseconds"),
        "request_id": request_id, "method": method, "path": path, "status": status,
        "duration_ms": round(seconds * 1000, 3), "client": client, **extra, "model": model or None,
    }))


def key_headers(api_key: str | None) -> dict[str, str]:
    """What inferd's own clients (`inferd top`, `inferd loadtest`) send: the Bearer form `presents_key` reads, the
    standard one a proxy in between also understands."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


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
