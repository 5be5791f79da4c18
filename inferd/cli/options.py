"""What several `inferd` commands share: the argument types, a package from a model file, sizes and setting names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferd.cli.render import console
from inferd.errors import InferdError
from inferd.serve.settings import ServerSettings, ServingSettings
from inferd.types import ComputeUnit, Precision

PackageArg = Annotated[Path, typer.Argument(
    help="model package directory, or a model file converted on first use and cached "
         "(.onnx, SavedModel directory, .keras, .h5, .tflite, TorchScript .pt)", exists=True)]
ComputeUnitsOpt = Annotated[ComputeUnit, typer.Option("--compute-units", "-c", help="which compute units to use")]
PrecisionOpt = Annotated[Precision, typer.Option("--precision", "-p", help="lowest precision allowed")]
BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="auto, openvino or onnxruntime")]

# The `serve` and `deploy` flags take their defaults from the settings, which own them (and their checks).
SERVER = ServerSettings.model_fields
MODEL = ServingSettings.model_fields
RayOptions = Annotated[list[str] | None, typer.Option(
    help="the Ray layout as NAME=VALUE, e.g. max_replicas=4, cpus_per_replica=0.5, models_per_replica=2 (README)")]

# Settings fields whose command-line option is not the field's own name in kebab case.
_SERVE_FLAGS = {"poll_interval_s": "--poll-interval", "timeout_s": "--timeout", "body_timeout_s": "--body-timeout",
                "head_timeout_s": "--head-timeout", "keep_alive_timeout_s": "--keep-alive-timeout",
                "drain_timeout_s": "--drain-timeout",
                "max_memory_bytes": "--max-memory", "load_models": "--load-model", "cors_origins": "--cors-origin"}


def serve_option(location: tuple[int | str, ...]) -> str:
    field = str(location[-1])
    return _SERVE_FLAGS.get(field, "--" + field.replace("_", "-"))


def package_path(source: Path) -> Path:
    """A package directory as it is; a model file converted with default options, once, then from the cache."""
    from inferd.convert import SourceKind, detect_source

    if detect_source(source) is SourceKind.PACKAGE:
        return source
    from inferd.runtime.sources import resolve_source

    with console.status(f"converting {source} (kept in the cache for the next time)") as status:
        resolved = resolve_source(source, progress=lambda step: status.update(f"{source.name}: {step}"))
    assert resolved.package.path is not None
    return resolved.package.path


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("IB"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        size = int(float(number) * units[unit])
    except (ValueError, OverflowError):
        raise InferdError(f"cannot read the size {text!r}; write e.g. 512M or 4G") from None
    if size < 0:
        raise InferdError(f"the size {text!r} is negative; write e.g. 512M or 4G")
    return size


def parse_duration(text: str) -> float:
    """Seconds from e.g. 90s, 30m, 12h, 30d or 2w; the unit is required, since no one unit is the obvious one."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        seconds = float(number) * units[unit]
    except (KeyError, ValueError):
        raise InferdError(f"cannot read the duration {text!r}; write a number and a unit, e.g. 12h, 30d or 2w") from None
    if not 0 <= seconds < float("inf"):
        raise InferdError(f"the duration {text!r} must be zero or more and finite, e.g. 12h, 30d or 2w")
    return seconds
