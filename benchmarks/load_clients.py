"""How the load generator's requests go out: HTTP clients, Triton shared memory and gRPC inputs.

Imported only by `loadgen` in its own process; each class prepares what it can before the clock starts, so
that a request costs the generator as little CPU as possible.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.parse
from pathlib import Path
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
        head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: {len(body)}\r\n"
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


class SharedMemoryInputs:
    """Triton's system shared memory from the client side: one region per concurrent request slot, holding
    the input tensor and, after it, the output; each request copies its tensor in and the output out, which
    is what a local client does instead of sending and receiving the bytes."""

    def __init__(self, payloads: list[dict[str, Any]], slots: int, output_bytes: int) -> None:
        from multiprocessing import shared_memory

        self.tensors = [Path(p["path"]).read_bytes() for p in payloads]
        self.input_bytes = len(self.tensors[0])
        if any(len(t) != self.input_bytes for t in self.tensors):
            raise ValueError("shared memory payloads must all have one shape")
        self.output_bytes = output_bytes
        prefix = f"inferd-bench-{os.getpid()}"
        self.regions = [shared_memory.SharedMemory(f"{prefix}-{k}", create=True,
                                                   size=self.input_bytes + output_bytes) for k in range(slots)]
        self.views = [memoryview(region.buf or b"") for region in self.regions]
        self.bodies = [json.dumps({
            "inputs": [{**payloads[0]["input"], "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": self.input_bytes}}],
            "outputs": [{"name": "logits", "parameters": {
                "shared_memory_region": region.name, "shared_memory_byte_size": output_bytes,
                "shared_memory_offset": self.input_bytes}}],
        }).encode() for region in self.regions]

    async def register(self, client: Client, url: str) -> None:
        """Register every region under its own (process-unique) name."""
        for region in self.regions:
            body = json.dumps({"key": f"/{region.name}", "offset": 0, "byte_size": region.size}).encode()
            await self._call(client, url, f"region/{region.name}/register", body)

    async def unregister(self, client: Client, url: str) -> None:
        for region in self.regions:
            await self._call(client, url, f"region/{region.name}/unregister", b"")

    @staticmethod
    async def _call(client: Client, url: str, action: str, body: bytes) -> None:
        base = url.split("/v2/", 1)[0]
        status, _, answer = await client.post(f"{base}/v2/systemsharedmemory/{action}", body,
                                              {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"shared memory {action} failed: {status} {answer[:200]!r}")

    def request(self, index: int, slot: int) -> bytes:
        """Copy the tensor into the slot's region; the body, which only names the region, never changes."""
        self.views[slot][:self.input_bytes] = self.tensors[index % len(self.tensors)]
        return self.bodies[slot]

    def output(self, slot: int) -> bytes:
        return bytes(self.views[slot][self.input_bytes:self.input_bytes + self.output_bytes])

    def close(self) -> None:
        for view in self.views:
            view.release()
        for region in self.regions:
            region.close()
            region.unlink()


class GrpcInputs:
    """The bare tensors sent with tritonclient.grpc.aio, the way a Triton gRPC client sends them (raw contents)."""

    def __init__(self, payloads: list[dict[str, Any]], address: str, model: str) -> None:
        import numpy as np
        import tritonclient.grpc.aio as grpc_client

        self.client = grpc_client.InferenceServerClient(address)
        self.model = model
        described = payloads[0]["input"]
        self.inputs = []
        for payload in payloads:
            tensor = np.frombuffer(Path(payload["path"]).read_bytes(), np.float32).reshape(described["shape"])
            item = grpc_client.InferInput(described["name"], described["shape"], described["datatype"])
            item.set_data_from_numpy(tensor)
            self.inputs.append(item)

    async def infer(self, index: int) -> tuple[int, str | None]:
        """(200, None), or (0, the gRPC status name) for a refused or failed call."""
        from tritonclient.utils import InferenceServerException

        try:
            result = await self.client.infer(self.model, [self.inputs[index % len(self.inputs)]])
        except InferenceServerException as exc:
            return 0, str(exc.status())
        return 200, None if result.as_numpy("logits") is not None else "unexpected_body"

    async def close(self) -> None:
        await self.client.close()
