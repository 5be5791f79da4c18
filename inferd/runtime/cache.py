"""Where compiled models and backend choices live on disk, and how the cache is listed and pruned.

A compiled artifact is only valid for the exact package bytes, backend version,
device and precision it was built for, so all of them go into its key; a change
of any of them simply misses the cache instead of loading something stale.

Keys are digests, so each compiled entry also carries an `entry.json` saying what
it holds, and every hit touches the entry: `inferd cache list` can then say what
each one is and when it was last used, and `inferd cache prune` drops the least
recently used first. A new package version (or inferd, or backend) leaves the old
entries behind for good, which is what pruning is for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
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


ENTRY_FILE = "entry.json"
KINDS = ("compiled", "converted", "choices", "peaks")
"""The cache's folders, one per kind of entry: a folder per entry in the first two, a JSON file in the others."""


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    kind: str
    holds: str
    """What the entry is, in words; empty for an entry an earlier inferd wrote without saying."""
    size: int
    last_used: float


def describe(directory: Path, **fields: object) -> None:
    """Say what a compiled entry holds, once it exists (a backend that keeps nothing on disk leaves none)."""
    if directory.is_dir() and not (directory / ENTRY_FILE).exists():
        write_json(directory / ENTRY_FILE, {**fields, "inferd": __version__})


def mark_used(path: Path) -> None:
    """A cache hit: the entry is recent again, so pruning keeps it longest."""
    with contextlib.suppress(OSError):
        os.utime(path)


def entries(root: Path) -> list[CacheEntry]:
    """Every entry under `root`, least recently used first."""
    found = []
    for kind in KINDS:
        folder = root / kind
        for path in sorted(folder.iterdir()) if folder.is_dir() else ():
            if path.name.startswith(".") or path.suffix == ".lock":
                continue  # a write in progress (write_json stages as a hidden file), or a conversion's lock
            with contextlib.suppress(OSError):  # gone meanwhile: pruned or replaced by another process
                found.append(CacheEntry(path, kind, _holds(path, kind), _size(path), path.stat().st_mtime))
    return sorted(found, key=lambda entry: entry.last_used)


def prune(root: Path, *, unused_for_s: float | None = None, max_bytes: int | None = None,
          everything: bool = False, dry_run: bool = False) -> list[CacheEntry]:
    """Remove every entry, or those unused for `unused_for_s`, then the least recently used until the rest fit in
    `max_bytes`; return what was (or, with `dry_run`, would be) removed.

    A running server keeps what it loaded in memory, so pruning never disturbs it; its next load compiles again.
    """
    listed = entries(root)
    now = time.time()
    doomed = [e for e in listed if everything or (unused_for_s is not None and now - e.last_used > unused_for_s)]
    if max_bytes is not None:
        kept = [e for e in listed if e not in doomed]
        total = sum(e.size for e in kept)
        for entry in kept:  # least recently used first
            if total <= max_bytes:
                break
            doomed.append(entry)
            total -= entry.size
    if not dry_run:
        _remove(e.path for e in doomed)
    return doomed


def _remove(paths: Iterable[Path]) -> None:
    """Entries and their locks (a conversion holding one keeps its lock: flock follows the open file, not the name)."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        path.with_name(f"{path.name}.lock").unlink(missing_ok=True)


def _size(path: Path) -> int:
    """Bytes the entry itself holds: the links to a package's model (OpenVINO's entries) count for nothing."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _holds(path: Path, kind: str) -> str:
    if kind == "compiled":
        entry = read_json(path / ENTRY_FILE)
        if entry is None:
            return ""
        return (f"{entry.get('package')} {entry.get('version')}: {entry.get('backend')} {entry.get('device')} "
                f"{entry.get('precision')}, {entry.get('threads')} threads, {entry.get('streams')} streams")
    if kind == "converted":
        manifest = read_json(path / "manifest.json") or {}
        framework = (manifest.get("source") or {}).get("framework")
        return f"{manifest.get('name')}, converted from {framework}" if manifest else ""
    if kind == "choices":
        choice = read_json(path) or {}
        return f"the backend measured fastest: {choice['device']}" if "device" in choice else ""
    return "this machine's compute peaks (inferd bench)"
