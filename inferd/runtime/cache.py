"""Where compiled models and backend choices live on disk.

A compiled artifact is only valid for the exact package bytes, backend version,
device and precision it was built for, so all of them go into its key; a change
of any of them simply misses the cache instead of loading something stale.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from inferd.version import __version__


def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    if override is not None:
        return Path(override)
    configured = os.environ.get("INFERD_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "inferd"


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]


def artifact_dir(root: Path, package_hash: str, backend: str, backend_version: str, device: str,
                 precision: str, streams: int, threads: int) -> Path:
    key = _digest(package_hash, backend, backend_version, device, precision, streams, threads, __version__)
    return root / "compiled" / key


def converted_dir(root: Path, source_digest: str, options: str) -> Path:
    """Where a model file converted with these options is kept as a package, so it is converted once."""
    return root / "converted" / _digest(source_digest, options, __version__)


def choice_path(root: Path, package_hash: str, request: dict[str, Any]) -> Path:
    """Which backend won the measurement for this package and these load options, on this machine."""
    return root / "choices" / f"{_digest(package_hash, sorted(request.items()), __version__)}.json"


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write via rename so concurrent loaders never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2))
    staging.replace(path)
