"""The `inferd serve` process: ports taken before any model loads, uvicorn with the connection guards, a drain
on SIGTERM that a supervisor and a balancer can rely on, systemd's notices, and the optional metrics port.

Decisions worth knowing:

* The HTTP (and metrics) sockets are bound first and listen only once the models are loaded: a busy port fails
  at once, naming the flag to change, and a balancer's connections are refused, not queued, while models load.
  The gRPC port is checked the same way and bound by the gRPC face, also before the models load.
* SIGTERM (or SIGINT) starts the drain at once: readiness goes 503 and gRPC health NOT_SERVING, systemd hears
  STOPPING=1, both faces stop taking connections and calls, and what they took has `drain_timeout_s` to finish
  before the process exits. A second signal exits without waiting.
* `/metrics` on `--metrics-port` needs no API key: that port serves nothing else, and stays private by not being
  published. It keeps answering through the drain, and closes last.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from inferd.errors import InferdError
from inferd.serve import systemd
from inferd.serve.app import begin_drain, create_app
from inferd.serve.connections import ConnectionLimits, guarded_protocol
from inferd.serve.metrics.series import metrics_router
from inferd.serve.settings import ServerSettings

# Open files the process needs besides its HTTP connections: models, gRPC, logs, the cache.
_FILES_BESIDES_CONNECTIONS = 256


def run(settings: ServerSettings, announce: Callable[[int], None] = lambda port: None) -> None:
    """Serve until SIGTERM or SIGINT, then drain; `announce` is told the HTTP port once it is bound."""
    http = bind(settings.host, settings.port, "--port")
    metrics_socket = (bind(settings.host, settings.metrics_port, "--metrics-port")
                      if settings.metrics_port is not None else None)
    if settings.grpc_port is not None:
        check_port_free(settings.host, settings.grpc_port, "--grpc-port")
    allow_open_files(settings.max_connections)
    app = create_app(settings)
    metrics = None
    if metrics_socket is not None:
        metrics = _SideServer(uvicorn_config(_metrics_app(app), settings, lifespan="off"), metrics_socket)
    announce(http.getsockname()[1])
    DrainingServer(uvicorn_config(app, settings), on_drain=lambda: begin_drain(app), metrics=metrics).run([http])


def uvicorn_config(app: ASGIApp, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """uvicorn as inferd runs it: the guarded protocol, the keep-alive and drain times of `settings`; `options`
    (uvicorn's own) override these, as a test's server on a port of its own does."""
    chosen: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "http": guarded_protocol(ConnectionLimits.of(settings)),
        "ws": "none", "access_log": False, "log_level": "info",
        # seconds as floats: uvicorn hands both to call_later and asyncio.timeout
        "timeout_keep_alive": settings.keep_alive_timeout_s, "timeout_graceful_shutdown": settings.drain_timeout_s,
    }
    return uvicorn.Config(app, **(chosen | options))


def bind(host: str, port: int, option: str) -> socket.socket:
    """A socket bound to host:port, not yet listening; a port in use is an error that names `option`."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a closing one's port is free
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InferdError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another port with {option}"
                          ) from None
    return sock


def check_port_free(host: str, port: int, option: str) -> None:
    """For a port that another library binds (gRPC's): fail now, before any model loads, not in a traceback after."""
    bind(host, port, option).close()


def allow_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit to what `max_connections` needs, as far as the hard limit allows, or refuse
    the setting: past the limit, accept() fails and uvicorn stops accepting for a second at a time."""
    needed = max_connections + _FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise InferdError(f"--max-connections {max_connections} needs {needed} open files but this process may "
                          f"open at most {hard} (ulimit -n, or LimitNOFILE= in a systemd unit); lower "
                          "--max-connections or raise the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _metrics_app(app: FastAPI) -> FastAPI:
    metrics_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    metrics_app.include_router(metrics_router(app.state.metrics))
    return metrics_app


class _SideServer(uvicorn.Server):
    """A server on its own socket, started and stopped by the main one, which alone handles signals."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        super().__init__(config)
        self.socket = sock
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.serve([self.socket]))

    async def stop(self) -> None:
        self.should_exit = True
        if self._task is not None:
            await self._task


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling `on_drain` and systemd the moment a signal arrives, systemd when it serves, and
    running the watchdog's pings and the metrics port beside it."""

    def __init__(self, config: uvicorn.Config, *, on_drain: Callable[[], None], metrics: _SideServer | None) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._metrics = metrics
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        interval = systemd.watchdog_interval_s()
        if interval is not None:  # from the start: loading is on worker threads, the loop keeps pinging
            self._watchdog = asyncio.ensure_future(systemd.watchdog(interval))
        if self._metrics is not None:
            self._metrics.start()
        await super().startup(sockets)
        if self.started and not self.should_exit:
            systemd.notify("READY=1", "STATUS=serving")

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Called from the signal handler: the drain itself is scheduled on the loop."""
        if not self.should_exit and self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain)
        super().handle_exit(sig, frame)

    def _drain(self) -> None:
        systemd.notify("STOPPING=1", "STATUS=draining")
        self._on_drain()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)  # the HTTP drain, then the app's shutdown: gRPC's drain, the models closed
        if self._metrics is not None:
            await self._metrics.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
