"""uvicorn's httptools protocol with the limits it lacks: a size and a time limit on a request's head, and a cap
on connections.

uvicorn bounds neither: httptools grows a header line by copying it on each read, so one 100 MB header with no key
holds the event loop (and every other client) for seconds, and a connection that sends nothing, or half a request
line, or half its headers, is never closed (its keep-alive timer runs only between requests). h11 bounds the head's
size (`h11_max_incomplete_event_size`) but not its time, and costs a pure-Python parse on every request, so the
limits are added to the fast parser here instead:

* **Head size**: the bytes read while a head is incomplete are counted before they can pile up; past
  `max_header_bytes` the client gets 431 and the connection closes. A later request on a kept-alive connection
  is counted from its second read, so the bound holds to within one read (256 KiB).
* **Head time**: a connection has `head_timeout_s` from its opening, and each later request from its first byte,
  to complete its request line and headers; then it gets 408 (or, having sent nothing, is just closed). The body
  has its own pause limit (`BodyLimitMiddleware`), and idle time between requests is uvicorn's keep-alive timeout.
  A request costs no timer of its own, only a clock reading: the timer is per connection.
* **Connections**: past `max_connections`, a new connection gets 503 with Retry-After and is closed at once,
  before it costs a parse; uvicorn's `limit_concurrency` would keep it open to answer each request 503.
* **Drain without the keep-alive race**: at shutdown uvicorn closes every idle kept-alive connection at once. A
  balancer (nginx's upstream `keepalive`) may have just written a request on one of those: it reads a reset with
  the request sent, and since inference is a POST it may not replay it, so the client gets a 502. Here an idle
  connection stays open through the drain instead: a request that arrives on it is answered, with
  `Connection: close`, and one that gets none is closed by uvicorn's keep-alive timer, which the balancer's own
  idle timeout undercuts (the nginx bundle sets it a second shorter), so the balancer closes it first.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from inferd.serve.settings import ServerSettings

_REASONS = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int
    head_timeout_s: float

    @classmethod
    def of(cls, settings: ServerSettings) -> ConnectionLimits:
        return cls(settings.max_connections, settings.max_header_bytes, settings.head_timeout_s)


class GuardedHttpProtocol(HttpToolsProtocol):
    """One per connection, as uvicorn makes them; `limits` is set on a subclass by `guarded_protocol`.

    Its one timer wakes at most every `head_timeout_s` and looks at how long the head in progress, if any, has taken.
    """

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_since: float | None = None  # when the head in progress began (the first: the connection)
        self._head_begun = False  # whether a byte of it has come
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"the server has {self.limits.max_connections} connections open, its limit; "
                              "retry shortly, or reuse a connection", ((b"retry-after", b"1"),))
            return
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._check_head)

    def data_received(self, data: bytes) -> None:
        in_head = self._head_since is not None  # a read that starts within a body, or between requests, is not all head
        super().data_received(data)
        if not in_head or self._head_since is None or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, f"the request line and headers are over {self.limits.max_header_bytes} bytes, the "
                              "server's limit; send fewer or shorter headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._head_since is None:
            self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_since, self._head_begun, self._head_bytes = None, False, 0
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed: the last request on a draining connection

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, less the close of idle connections (see the module's docstring)."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
        elif self.timeout_keep_alive_task is None and self._head_since is None:
            self.transport.close()  # neither timer would ever close it

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _check_head(self) -> None:
        if self.transport.is_closing():
            return
        left = self.limits.head_timeout_s
        if self._head_since is not None:
            left += self._head_since - self.loop.time()
            if left <= 0:
                self._head_timed_out()
                return
        self._head_timer = self.loop.call_later(left, self._check_head)

    def _head_timed_out(self) -> None:
        if self._head_begun:
            self._refuse(408, "the request line and headers did not arrive within the server's head timeout "
                              f"({self.limits.head_timeout_s:g} s); send the whole head at once")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """Answer outside the app (no request exists yet) and close, as uvicorn answers a head it cannot parse."""
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {status} {_REASONS[status]}".encode(), b"content-type: application/json",
                b"content-length: " + str(len(body)).encode(), b"connection: close"]
        head += [name + b": " + value for name, value in headers]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedHttpProtocol]:
    """The protocol class uvicorn makes each connection with (its `http` setting), holding `limits`."""

    class Limited(GuardedHttpProtocol):
        pass

    Limited.limits = limits
    return Limited
