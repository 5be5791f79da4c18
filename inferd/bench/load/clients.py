"""How a load generator's HTTP requests go out: aiohttp, httpx, or a raw keep-alive client in the spirit of wrk.

Each prepares what it can before the clock starts, so that a request costs the generator as little CPU as
possible: the raw client writes prepared bytes and parses the answer with httptools, and on a 2-core machine
that it shares with the server, what it measures is the server's work rather than its own.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any


class RawConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; httptools parses the responses."""

    def __init__(self) -> None:
        import httptools

        self.transport: Any = None  # uvloop's transports are not asyncio.Transport instances
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._answer: asyncio.Future[tuple[int, dict[str, str], bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(ConnectionResetError("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").title()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._answer is not None
        if not self._answer.done():
            self._answer.set_result((self._parser.get_status_code(), self._headers, b"".join(self._body)))

    async def exchange(self, head: bytes, body: bytes) -> tuple[int, dict[str, str], bytes]:
        assert self.transport is not None
        self._headers, self._body = {}, []
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        return await self._answer


class RawClient:
    """Connections opened on demand up to the cap and reused; one broken by the server is replaced."""

    def __init__(self, connections: int) -> None:
        self._idle: list[RawConnection] = []
        self._slots = asyncio.Semaphore(connections)

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname, f"no host in {url}"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode("latin-1")
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            if connection is None or connection.closed:
                _, connection = await asyncio.get_running_loop().create_connection(
                    RawConnection, parts.hostname, parts.port or 80)
            try:
                answer = await connection.exchange(head, body)
            except BaseException:
                assert connection.transport is not None
                connection.transport.close()
                raise
            if answer[1].get("Connection", "").lower() != "close":
                self._idle.append(connection)
            return answer

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()


class Client:
    """aiohttp (default), httpx or the raw client behind one call: post(url, body, headers) -> (status, headers, body)."""

    def __init__(self, kind: str, connections: int, timeout_s: float) -> None:
        self.kind = kind
        self.connections = connections
        self.timeout_s = timeout_s
        self._session: Any = None

    async def __aenter__(self) -> Client:
        if self.kind == "raw":
            self._session = RawClient(self.connections)
        elif self.kind == "httpx":
            import httpx

            self._session = httpx.AsyncClient(
                limits=httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections),
                timeout=httpx.Timeout(self.timeout_s), trust_env=False)
        else:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections), trust_env=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kind == "raw":
            self._session.close()
        elif self.kind == "httpx":
            await self._session.aclose()
        else:
            await self._session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any, bytes]:
        if self.kind == "raw":
            async with asyncio.timeout(self.timeout_s):
                return await self._session.post(url, body, headers)
        if self.kind == "httpx":
            response = await self._session.post(url, content=body, headers=headers)
            return response.status_code, response.headers, response.content
        async with self._session.post(url, data=body, headers=headers) as response:
            return response.status, response.headers, await response.read()
