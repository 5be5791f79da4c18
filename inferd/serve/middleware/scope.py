"""Reading an ASGI scope the way the middlewares need it: cheaply, before any route runs."""

from __future__ import annotations

from starlette.types import Scope


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a lower-case header, without building Starlette's Headers for one lookup."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None
