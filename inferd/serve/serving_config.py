"""Per-model serving settings: `serving.toml` beside the package, over the server's defaults.

A model directory may hold `serving.toml` (for every version) and a version
directory its own (for that version), so operators tune batching and limits
without rebuilding packages; a load request may override them for that load.
Unknown keys are errors: a typo must not be silently ignored on a production server.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferd.errors import InvalidInput, PackageError, validation_summary
from inferd.types import ComputeUnit, Precision

SERVING_FILE = "serving.toml"


class ServingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instances: int = Field(1, ge=1, le=64, description="concurrent executions of the model")
    max_batch_size: int = Field(8, ge=1, le=4096, description="rows per batch; 1 disables dynamic batching")
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    max_queue_size: int = Field(64, ge=1, description="queued requests before answering 429")
    timeout_s: float | None = Field(30.0, gt=0, description="default request deadline")
    precision: Precision = Precision.AUTO
    compute_units: ComputeUnit = ComputeUnit.ALL


def load_serving_config(defaults: ServingConfig, *directories: Path) -> ServingConfig:
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
        return ServingConfig.model_validate(merged)
    except ValidationError as exc:
        raise PackageError(f"invalid serving settings for {directories[-1]}: {exc}") from exc


def with_overrides(config: ServingConfig, overrides: Mapping[str, Any]) -> ServingConfig:
    """`config` with a load request's `overrides`, validated as serving.toml is."""
    try:
        return ServingConfig.model_validate({**config.model_dump(), **overrides})
    except ValidationError as exc:
        raise InvalidInput(f"invalid serving settings in the load request: {validation_summary(exc)}") from None
