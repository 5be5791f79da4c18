"""Server settings, from flags or `INFERD_*` environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from inferd.io import DEFAULT_MAX_PIXELS
from inferd.serve.serving_config import ServingConfig


class ServerSettings(BaseModel):
    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str | None = None
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none", description="none: load all at start; poll: also follow the directory; explicit: load on request"
    )
    load_models: list[str] = Field(default_factory=list, description="models to load at start in explicit mode")
    poll_interval_s: float = Field(5.0, gt=0)
    models: ServingConfig = Field(default_factory=ServingConfig, description="defaults for every model")
    max_memory_bytes: int | None = Field(None, gt=0, description="unload least recently used models past this")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(60.0, gt=0, description="longest pause within a request body before 408")
    api_key: str | None = Field(default_factory=lambda: os.environ.get("INFERD_API_KEY") or None)
    cors_origins: list[str] = Field(default_factory=list)
    access_log: bool = Field(True, description="log one JSON line per request (inferd.access logger)")
    allow_shared_memory: bool = Field(False, description="let clients on this machine register shared memory")
    grpc_port: int | None = Field(None, ge=0, le=65535, description="serve V2 over gRPC too, on this port (0: any free)")
