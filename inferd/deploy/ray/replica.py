"""A model replica: `inferd serve`'s own application, in process, for one model or (multiplexed) the few asked for last.

The router hands a replica the HTTP request as it came (method, path, headers, body) and the replica runs it
through inferd's app, so the routes, the V2 codec, the dynamic batcher, the limits and the error answers are
the server's, not a copy; the body is decoded once, here, where the CPUs for it are reserved.

Decisions worth knowing:

* The model loads in the constructor, so Serve counts a replica as started only once it can answer; a
  replica that cannot load its model fails to start and Serve reports why.
* Multiplexed, `serve.multiplexed` decides which models a replica holds (LRU, `models_per_replica`) and
  routes each request to a replica that already holds its model; unloading drains the model's queue first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import ray
from ray import serve

from inferd.errors import InferdError
from inferd.serve import ServerSettings, create_app
from inferd.serve.repository import ModelRepository

Header = tuple[bytes, bytes]


@dataclass(frozen=True)
class Forwarded:
    """An HTTP request as the router received it; `path` is the raw, still percent-encoded path."""

    method: str
    path: str
    query: bytes
    headers: list[Header]
    body: bytes


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[Header]
    body: bytes


def bind_to_node_address() -> None:
    """In a replica, before Serve starts its inter-deployment gRPC server: bind it to this node's address.

    Ray Serve 2.60 binds that server to [::] (every interface) whatever address the node was started with
    (`--node-ip-address`), so a cluster told to stay on 127.0.0.1, or on a private network, would still listen
    on every interface. Run from the constructor, which Serve calls before it starts that server.
    """
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "inferd_node_address", False):
        return
    host = ray.util.get_node_ip_address()
    node = f"[{host}]" if ":" in host else host

    def bind_node(server: Any, address: str) -> int:
        return int(bind(server, address.replace("[::]", node, 1) if address.startswith("[::]:") else address))

    bind_node.inferd_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = bind_node


class _Held:
    """A model a multiplexed replica holds; Serve calls `__del__` when its LRU lets the model go."""

    def __init__(self, repository: ModelRepository, name: str) -> None:
        self._repository, self._name = repository, name

    async def __del__(self) -> None:
        with contextlib.suppress(InferdError):
            await self._repository.unload(self._name)


class ModelServer:
    """`server` is ServerSettings as JSON; `models` are loaded now, or, with `models_per_replica`, on demand."""

    async def __init__(  # type: ignore[misc]  # Serve awaits an async constructor
        self, server: dict[str, Any], models: list[str], models_per_replica: int | None = None,
    ) -> None:
        bind_to_node_address()
        settings = ServerSettings.model_validate(server).model_copy(update={
            "model_control": "explicit", "load_models": models, "grpc_port": None})
        self.app = create_app(settings)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        repository: ModelRepository = self.app.state.repository
        missing = sorted(set(models) - set(repository.names()))
        if missing:
            reasons = {row["name"]: row["reason"] for row in repository.index() if row["name"] in missing}
            raise InferdError(f"could not load {', '.join(missing)} from {settings.repository}: {reasons}")
        self._hold: Callable[[str], Awaitable[_Held]] | None = None
        if models_per_replica is not None:
            async def hold(name: str) -> _Held:
                await repository.load(name)
                return _Held(repository, name)

            self._hold = serve.multiplexed(max_num_models_per_replica=models_per_replica)(hold)

    async def _ensure_model(self) -> None:
        """Multiplexed: load the request's model (evicting the least recently used) before the app sees it.

        A model that fails to load is left to the app, which answers 404 with the reason as `inferd serve` does.
        """
        name = serve.get_multiplexed_model_id()
        if self._hold is not None and name:
            with contextlib.suppress(InferdError):
                await self._hold(name)

    async def forward(self, request: Forwarded) -> Answer:
        await self._ensure_model()
        return await _call(self.app, request)

    async def __del__(self) -> None:
        """Serve's graceful shutdown: requests already accepted finish, then the models close."""
        await self._lifespan.__aexit__(None, None, None)



async def _call(app: Any, request: Forwarded) -> Answer:
    """One request through the app's ASGI interface, its answer as the app wrote it (still compressed).

    Called directly rather than through an HTTP client's ASGI transport, which took longer per request (see the
    notes of benchmarks/results/ray_serve.json).
    """
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
             "scheme": "http", "path": unquote(request.path), "raw_path": request.path.encode("latin-1"),
             "root_path": "", "query_string": request.query, "headers": request.headers,
             "client": ("127.0.0.1", 0), "server": ("replica", 80)}
    answered = asyncio.Event()
    body_read = False
    status, headers, chunks = 500, [], []

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await answered.wait()  # as a server does: the client is gone only once the answer is out
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status, headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    try:
        await app(scope, receive, send)
    finally:
        answered.set()
    return Answer(status, headers, b"".join(chunks))
