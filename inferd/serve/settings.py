"""Server settings, from flags or `INFERD_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from inferd.io import DEFAULT_MAX_PIXELS
from inferd.types import ComputeUnit, Precision


class ServerSettings(BaseModel):
    repository: Path = Path("models")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    default_model: str | None = None
    compute_units: ComputeUnit = ComputeUnit.ALL
    precision: Precision = Precision.AUTO
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)
    max_in_flight: int = Field(64, gt=0, description="async predictions per model before new ones wait")
    default_top_k: int = Field(5, ge=1)
