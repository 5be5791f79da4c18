"""The command line's way in: `inferd serve --ray ADDRESS` (the application on a running cluster, until Ctrl-C) and
`inferd deploy ray` (its Serve config file); Ray is imported only once the loopback switch is set."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from inferd.deploy.ray.settings import RaySettings, keep_ray_on_loopback, parse_options
from inferd.errors import InferdError
from inferd.serve.settings import ServerSettings

__all__ = ["parse_options", "run", "write_config"]


def run(address: str, repository: str | Path, server: ServerSettings, layout: RaySettings,
        *, started: Callable[[], None] = lambda: None) -> None:
    """Deploy, call `started`, serve until interrupted, then delete the application (the cluster keeps running)."""
    keep_ray_on_loopback(address)
    import ray
    from ray import serve

    from inferd.deploy.ray.app import build_app, start_proxies

    application = build_app(repository, server, layout)  # a bad repository is refused before connecting
    _check_reachable(address)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        start_proxies(layout)
        serve.run(application, name=layout.name, route_prefix="/")
        started()
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        if serve.status().applications.get(layout.name):
            serve.delete(layout.name)
        ray.shutdown()


def write_config(path: Path, repository: str, server: ServerSettings, layout: RaySettings) -> None:
    keep_ray_on_loopback(None)
    from inferd.deploy.ray import app

    app.write_config(path, repository, server, layout)


def _check_reachable(address: str) -> None:
    """A clear error now, rather than Ray's retries for minutes, when nothing listens at ADDRESS."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=3):
            return
    except (OSError, ValueError):
        raise InferdError(f"no Ray cluster answers at {address}; start one (`ray start --head --node-ip-address "
                          "127.0.0.1 --port 6379`) or give its head's HOST:PORT") from None
