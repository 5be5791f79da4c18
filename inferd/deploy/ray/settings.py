"""How an inferd repository is laid out on a Ray cluster: replicas, CPUs, proxies, and the Serve options they imply.

`RaySettings` owns these defaults and checks, as `ServingSettings` owns each model's; the Serve options of a
model's deployment are derived from both here, once, so the application builder, the config file and
`inferd serve --ray` cannot disagree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferd.errors import InferdError, InvalidInput, validation_summary
from inferd.serve.settings import ServingSettings

LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray replaces a node address of 127.0.0.1 by the machine's network address unless this is 0 (its name is
historical): the one way to keep every Ray process of a one-machine cluster on loopback."""

RETRY_AFTER_S = 1.0
QUIET = {"enable_access_log": False, "log_level": "WARNING"}
"""Serve's per-request log lines cost more than a small model's inference; inferd's app logs its own errors."""


class RaySettings(BaseModel):
    """How many replicas of each model, on how much CPU, behind which proxies."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field("inferd", min_length=1, description="the Serve application's name")
    min_replicas: int = Field(1, ge=0, le=1024, description="replicas per model when idle (0 scales to zero)")
    max_replicas: int = Field(1, ge=1, le=1024, description="replicas per model under load")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="requests in flight per replica that autoscaling aims at (default: max_batch_size)")
    upscale_delay_s: float = Field(30.0, ge=0, le=3600, description="load must last this long before scaling up")
    downscale_delay_s: float = Field(600.0, ge=0, le=86400, description="idleness must last this long before scaling down")
    autoscaling_report_s: float = Field(
        0.1, ge=0.05, le=60,
        description="how often each router reports its queue per model to Serve's autoscaler; more models and "
                    "routers than a controller can hear from ten times a second want more")
    cpus_per_replica: float = Field(1.0, gt=0, le=1024,
                                    description="CPUs Ray reserves for each model replica; its intra-op threads match")
    models_per_replica: int | None = Field(
        None, ge=1, le=1024,
        description="serve every model from one multiplexed deployment holding at most this many per replica (LRU); "
                    "unset: one deployment per model")
    ingress_replicas: int = Field(1, ge=1, le=1024, description="replicas of the HTTP/gRPC router")
    max_ingress_queue: int = Field(1024, ge=1, description="requests each proxy queues for the router before 503")
    http_host: str = Field("127.0.0.1", description="address Serve's HTTP proxies bind; 0.0.0.0 exposes them")
    http_port: int = Field(8000, ge=0, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] = Field(
        "EveryNode", description="where Serve runs proxies: one per node spreads the HTTP work")

    @model_validator(mode="after")
    def _replica_range(self) -> RaySettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self

    @property
    def threads(self) -> int:
        """Intra-op threads of a replica: the whole CPUs it reserves, at least one, so replicas do not fight over cores."""
        return max(1, math.floor(self.cpus_per_replica))

    def model_options(self, serving: ServingSettings) -> dict[str, Any]:
        """Serve options of one model's deployment.

        Serve keeps up to two batches per execution in flight at a replica, one running and one filling, so
        inferd's batcher always has company for a request; the rest wait at the caller, at most
        `max_queue_size` of them, which then answers 429 with Retry-After as `inferd serve` does. Waiting at the
        caller rather than in a replica's queue lets Serve send each request to the least busy replica.

        Routers report their queues every `autoscaling_report_s` (at the 0.5 s inferd used before, scaling from
        zero spent most of a second waiting): the report Serve sends at once when a request meets a deployment
        at zero replicas carries the queue lengths recorded so far, not that request (`Router.
        _get_metrics_report` in Ray 2.60), so the upscale waits for the next regular report.
        """
        in_flight = 2 * serving.instances * serving.max_batch_size
        options: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.cpus_per_replica},
            "max_ongoing_requests": in_flight,
            "max_queued_requests": serving.max_queue_size,
            "backpressure_config": {"status_code": 429, "retry_after_s": RETRY_AFTER_S},
            "graceful_shutdown_timeout_s": serving.timeout_s or 30.0,
            "logging_config": QUIET,
        }
        if self.min_replicas == self.max_replicas:
            options["num_replicas"] = self.max_replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing_requests or serving.max_batch_size,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                "metrics_interval_s": self.autoscaling_report_s, "look_back_period_s": 2.0,
            }
        return options

    def ingress_options(self) -> dict[str, Any]:
        """The router only moves bytes between the proxy and the models: little CPU, many requests in flight."""
        return {
            "num_replicas": self.ingress_replicas, "ray_actor_options": {"num_cpus": 0},
            "max_ongoing_requests": 1024, "max_queued_requests": self.max_ingress_queue,
            "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
            "logging_config": QUIET,
        }


def parse_options(pairs: list[str], **given: Any) -> RaySettings:
    """`--ray-option NAME=VALUE` flags over `given` (the proxies' host and port from `serve`'s flags) as RaySettings,
    with a message naming what to fix."""
    values: dict[str, Any] = dict(given)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"--ray-option takes NAME=VALUE, got {pair!r}; names: {', '.join(RaySettings.model_fields)}")
        values[name.strip().replace("-", "_")] = value.strip()
    try:
        return RaySettings.model_validate(values)
    except ValidationError as exc:
        raise InvalidInput(f"invalid --ray-option: {validation_summary(exc)}; "
                           f"names: {', '.join(RaySettings.model_fields)}") from None


def repository_path(location: str | Path) -> Path:
    """The repository as every node reads it: an absolute local path (a shared file system) or a file:// URI.

    Relative paths are resolved here, on the machine that builds the application, since replicas on other
    nodes start in other directories.
    """
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive
        raise InferdError(f"cannot read the repository {text!r}: give a local path or a file:// URI that every node "
                          "can read (mount object storage, e.g. with s3fs or gcsfuse, and give its path)")
    else:
        path = Path(text)
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise InferdError(f"{path} is not a directory; run `inferd prepare {path}` first, on storage every node mounts")
    return path


def keep_ray_on_loopback(address: str | None) -> None:
    """Before Ray is imported: a cluster at a loopback address (or a new local one) stays on loopback."""
    host = (address or "127.0.0.1").removeprefix("ray://").rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost", "::1", "[::1]", "auto", "local"):
        os.environ.setdefault(LOOPBACK_SWITCH, "0")
