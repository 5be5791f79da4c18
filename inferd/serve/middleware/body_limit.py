"""The request body guard: a size limit, and no stalls mid-body."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.serve.middleware.scope import header
from inferd.serve.responses import json_error


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
        declared = header(scope, b"content-length") if scope["type"] == "http" else None
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
    timeout around every read: `asyncio.timeout` costs a timer handle per chunk,
    this costs two clock reads. On a stall it cancels the request's task, whose only
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
