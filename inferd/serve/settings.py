"""The server's settings and each model's serving settings: the one place that holds their defaults and checks.

`ServerSettings` comes from flags or `INFERD_*` environment variables;
`ServingSettings` is what one model is served with (batching, limits, compute),
and it is what the dynamic batcher reads, so a value is checked once, here, and
a default written once, here (the `serve` command's flags read theirs from these fields).

A model directory may hold `serving.toml` (for every version) and a version
directory its own (for that version), so operators tune batching and limits
without rebuilding packages; a load request may override them for that load.
Unknown keys are errors: a typo must not be silently ignored on a production server.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from inferd.errors import InvalidInput, PackageError, PayloadTooLarge, validation_summary
from inferd.io import DEFAULT_MAX_PIXELS
from inferd.types import ComputeUnit, Precision

SERVING_FILE = "serving.toml"
MAX_TIMEOUT_S = 24 * 3600.0
"""The longest deadline a model or a request may set: a bound that keeps deadline arithmetic finite."""


class ServingSettings(BaseModel):
    """How one model is served; the defaults suit a small CNN on a CPU."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # `executions` is what the dynamic batcher called this setting when it had a copy of its own: still understood.
    instances: int = Field(1, le=64, validation_alias=AliasChoices("instances", "executions"),
                           description="concurrent executions of the model (engine runs in flight at once)")
    max_batch_size: int = Field(8, ge=1, le=4096, description="rows per batch (not requests); 1 disables dynamic batching")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000,
                                      description="how long the oldest queued request may wait for others; "
                                                  "0 dispatches as soon as an execution is free")
    preferred_batch_sizes: list[int] = Field(default_factory=list,
                                             description="row counts at which a batch leaves without waiting out the delay")
    max_queue_size: int = Field(64, ge=1, le=65_536, description="queued requests (not rows) before answering 429")
    max_request_rows: int = Field(256, ge=1, le=65_536,
                                  description="rows (images, texts, tensor rows) one request may carry, on every face; "
                                              "more are refused with 413")
    timeout_s: float | None = Field(30.0, gt=0, le=MAX_TIMEOUT_S,
                                    description="deadline of requests that bring none; None waits without limit")
    precision: Precision = Precision.AUTO
    compute_units: ComputeUnit = ComputeUnit.ALL
    threads: int | None = Field(None, ge=1, le=1024,
                                description="intra-op threads of the model; None: every core the process may use "
                                            "(a Ray replica sets its reserved CPUs)")

    @field_validator("instances")
    @classmethod
    def _runs_at_all(cls, instances: int) -> int:
        if instances < 1:
            raise PydanticCustomError("greater_than_equal", "Input should be at least 1: a model needs an execution to run")
        return instances

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _within_a_batch(cls, sizes: list[int], info: ValidationInfo) -> list[int]:
        limit = info.data.get("max_batch_size")
        if limit is not None and any(not 1 <= size <= limit for size in sizes):
            raise ValueError(f"every size must lie between 1 and max_batch_size ({limit}); got {sizes}")
        return sizes

    def check_rows(self, rows: int, what: str = "rows") -> None:
        """Refuse a request past `max_request_rows`, before any work on its rows, with the same answer on every face.

        A larger request gains nothing over several smaller ones (batches are merged by rows anyway) and holds the
        queue up for everyone behind it.
        """
        if rows > self.max_request_rows:
            raise PayloadTooLarge(f"{rows} {what} in one request; this model takes at most {self.max_request_rows} "
                                  "per request (max_request_rows): split the request")


def load_serving_settings(defaults: ServingSettings, *directories: Path) -> ServingSettings:
    """`defaults` overridden by each directory's serving.toml in order (model dir, then version dir)."""
    merged = defaults.model_dump()
    for directory in directories:
        file = directory / SERVING_FILE
        if not file.is_file():
            continue
        try:
            merged.update(tomllib.loads(file.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise PackageError(f"{file} is not valid TOML: {exc}") from exc
    try:
        return ServingSettings.model_validate(merged)
    except ValidationError as exc:
        raise PackageError(f"invalid serving settings for {directories[-1]}: {exc}") from exc


def with_overrides(settings: ServingSettings, overrides: Mapping[str, Any]) -> ServingSettings:
    """`settings` with a load request's `overrides`, validated as serving.toml is."""
    try:
        return ServingSettings.model_validate({**settings.model_dump(), **overrides})
    except ValidationError as exc:
        raise InvalidInput(f"invalid serving settings in the load request: {validation_summary(exc)}") from None


class ServerSettings(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str | None = None
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none", description="none: load all at start; poll: also follow the directory; explicit: load on request"
    )
    load_models: list[str] = Field(default_factory=list, description="models to load at start in explicit mode")
    poll_interval_s: float = Field(5.0, gt=0)
    models: ServingSettings = Field(default_factory=ServingSettings, description="defaults for every model")
    max_memory_bytes: int | None = Field(None, gt=0, description="unload least recently used models past this")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(60.0, gt=0, description="longest pause within a request body before 408")
    api_key: str | None = Field(default_factory=lambda: os.environ.get("INFERD_API_KEY") or None)
    cors_origins: list[str] = Field(default_factory=list)
    access_log: bool = Field(True, description="log one JSON line per request (inferd.access logger)")
    allow_shared_memory: bool = Field(False, description="let clients on this machine register shared memory")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="serve V2 over gRPC too, on this port (0: any free)")
    metrics_port: int | None = Field(None, ge=0, le=65535,
                                     description="serve GET /metrics on this port too, without the API key, so that "
                                                 "port can stay private (Triton uses 8002)")
    # Connections: the HTTP face closes what cannot become a request, so slow or idle clients cannot pin it.
    max_connections: int = Field(1000, ge=1, le=1_000_000,
                                 description="open HTTP connections; one more is answered 503 and closed")
    max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024,
                                  description="largest request line and headers; more is answered 431 and closed")
    head_timeout_s: float = Field(10.0, gt=0, le=3600,
                                  description="seconds a client has to send a request line and headers; a connection "
                                              "that sends nothing, or half a head, is then closed")
    keep_alive_timeout_s: float = Field(5.0, gt=0, le=3600,
                                        description="seconds an idle connection stays open between requests; set it "
                                                    "above a balancer's upstream keepalive timeout")
    drain_timeout_s: float = Field(30.0, ge=0, le=3600,
                                   description="after SIGTERM, seconds the calls already accepted have to finish")
