"""The model repository: a directory of packages, loaded, versioned, swapped and evicted while serving.

Layouts: `repo/<name>/manifest.json`, or `repo/<name>/<version>/manifest.json`
for several versions (the highest number is the default). Names are validated
before they touch the file system, so a request can never name a path.

Requests hold a reference to the `ModelEntry` they started with; loading a new
version swaps the table atomically and the old entry drains its queue before it
closes, so a reload or an unload never fails a request that was accepted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio.to_thread
import numpy as np

from inferd.errors import InferdError, InvalidModelName, ModelNotFound, NotReady
from inferd.package import MANIFEST_FILE
from inferd.runtime import CompiledModel, load
from inferd.serve.batching.inputs import BatchInputs, Checked, TextInputs
from inferd.serve.batching.scheduler import BatchObserver, DynamicBatcher
from inferd.serve.metrics.series import resident_memory_bytes
from inferd.serve.phases import Phases
from inferd.serve.settings import ServingSettings, load_serving_settings, with_overrides
from inferd.serve.stats import ModelStats
from inferd.serve.text import takes_text

log = logging.getLogger("inferd.repository")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
ModelState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]


def check_name(name: str, what: str = "model name") -> str:
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        raise InvalidModelName(
            f"invalid {what} {name[:64]!r}: use letters, digits, '.', '_' and '-' (at most 128, no '..' or '/')"
        )
    return name


def version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def discover(root: Path) -> dict[str, dict[str, Path]]:
    """name -> version -> package directory, for every package under `root`."""
    found: dict[str, dict[str, Path]] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not MODEL_NAME.fullmatch(entry.name):
            continue
        if (entry / MANIFEST_FILE).is_file():
            found.setdefault(entry.name, {})["1"] = entry
            continue
        for version_dir in sorted(entry.iterdir()):
            if version_dir.is_dir() and MODEL_NAME.fullmatch(version_dir.name) and (version_dir / MANIFEST_FILE).is_file():
                found.setdefault(entry.name, {})[version_dir.name] = version_dir
    return found


class MetricsSink(Protocol):
    """What the repository reports to the metrics module (kept abstract so this module does not import it)."""

    def observer_for(self, model: str, version: str) -> BatchObserver: ...

    def track_model(self, name: str, version: str, load_seconds: float, queue_depth: Callable[[], int],
                    in_flight: Callable[[], int], stats: ModelStats, memory_bytes: int | None = None,
                    queue_capacity: int | None = None) -> None: ...

    def model_failed(self, name: str) -> None: ...

    def forget_model(self, name: str, version: str) -> None: ...


class _Fanout:
    """Sends batcher events to the Triton-style stats and to Prometheus alike; the stats take only the batches, as
    each request records its own queue time when it succeeds."""

    def __init__(self, stats: ModelStats, series: BatchObserver | None) -> None:
        self._stats = stats
        self._series = series

    def on_batch(self, rows: int, requests: int, phases: Phases) -> None:
        self._stats.on_batch(rows, requests, phases)
        if self._series is not None:
            self._series.on_batch(rows, requests, phases)

    def on_dequeued(self, queue_s: float) -> None:
        if self._series is not None:
            self._series.on_dequeued(queue_s)


@dataclass
class ModelEntry:
    name: str
    version: str
    path: Path
    config: ServingSettings
    model: CompiledModel
    batcher: DynamicBatcher
    stats: ModelStats
    load_seconds: float
    memory_bytes: int
    last_used: float = field(default_factory=time.monotonic)

    def queue_depth(self) -> int:
        return self.batcher.queue_depth

    def in_flight(self) -> int:
        return self.batcher.rows_in_flight

    def admit(self) -> None:
        """Raise now if a request would be refused (overloaded, shutting down), before a handler reads a large body."""
        self.batcher.admit()

    def measured(self) -> AbstractContextManager[Phases]:
        """One request's handling, decoding to encoding, for the statistics: a face times its own decoding and
        encoding in the phases it gets (`Phases.input`, `Phases.output`) and passes them to `infer`; the request
        succeeds if the block ends without an exception."""
        return self.stats.request()

    async def infer(
        self, feeds: Mapping[str, Any] | Checked, *, phases: Phases, timeout_s: float | None = None,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run through the dynamic batcher with the request's deadline; without one the batcher applies the model's.
        `phases` (from `measured`) receive the queue time and the batch's compute."""
        self.last_used = time.monotonic()
        deadline = self.last_used + timeout_s if timeout_s is not None else None
        return await self.batcher.submit(feeds, deadline=deadline, disconnected=disconnected, phases=phases)


class ModelRepository:
    def __init__(
        self,
        root: Path,
        *,
        defaults: ServingSettings | None = None,
        metrics: MetricsSink | None = None,
        max_memory_bytes: int | None = None,
        max_in_flight: int = 256,
    ) -> None:
        self.root = root
        self.defaults = defaults or ServingSettings()
        self.metrics = metrics
        self.max_memory_bytes = max_memory_bytes
        self.max_in_flight = max_in_flight
        self._entries: dict[str, dict[str, ModelEntry]] = {}
        self._states: dict[str, tuple[ModelState, str]] = {}
        self._load_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._entries)

    def versions(self, name: str) -> list[str]:
        return sorted(self._entries.get(name, {}), key=version_key)

    def entries(self) -> list[ModelEntry]:
        return [entry for versions in self._entries.values() for entry in versions.values()]

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        check_name(name)
        versions = self._entries.get(name)
        if not versions:
            state, reason = self._states.get(name, ("UNAVAILABLE", ""))
            if state in ("LOADING", "UNLOADING"):
                raise NotReady(f"model {name!r} is {state.lower()}; retry shortly")
            known = self.names()
            raise ModelNotFound(f"model {name!r} not found; available: {known}" + (f" ({reason})" if reason else ""))
        if version is None or version == "":
            return versions[max(versions, key=version_key)]
        check_name(version, "version")
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}; available: {self.versions(name)}")
        return versions[version]

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version on disk or loaded (or only those serving), with its state, as Triton lists them."""
        rows = []
        on_disk = discover(self.root)
        for name in sorted(set(on_disk) | set(self._entries) | set(self._states)):
            loaded = self._entries.get(name, {})
            for version in sorted(set(on_disk.get(name, {})) | set(loaded), key=version_key):
                if version in loaded:
                    rows.append({"name": name, "version": version, "state": "READY", "reason": ""})
                elif not ready_only:
                    state, reason = self._states.get(name, ("UNAVAILABLE", "unloaded"))
                    rows.append({"name": name, "version": version,
                                 "state": "UNAVAILABLE" if state == "READY" else state, "reason": reason})
        return rows

    # -- loading ------------------------------------------------------------------------------

    async def load_all(self) -> dict[str, str]:
        """Load every model found; one bad package is reported, not fatal to the others."""
        failures = {}
        for name in discover(self.root):
            try:
                await self.load(name)
            except InferdError as exc:
                failures[name] = exc.message
        return failures

    async def load(self, name: str, overrides: Mapping[str, Any] | None = None) -> list[ModelEntry]:
        """(Re)load every version of `name` on disk, then swap them in at once; old entries drain.

        `overrides` set serving settings for this load over the flags and serving.toml.
        """
        check_name(name)
        if overrides:
            with_overrides(self.defaults, overrides)  # refuse bad values before anything changes
        async with self._load_lock:
            versions = discover(self.root).get(name)
            if not versions:
                raise ModelNotFound(f"no package named {name!r} in {self.root}; available: {sorted(discover(self.root))}")
            if name not in self._entries:
                self._states[name] = ("LOADING", "")
            try:
                fresh = {v: await self._build(name, v, path, overrides or {}) for v, path in versions.items()}
            except InferdError as exc:
                self._states[name] = ("UNAVAILABLE", exc.message)
                if self.metrics:
                    self.metrics.model_failed(name)
                raise
            old = self._entries.get(name, {})
            self._entries[name] = fresh  # the atomic swap: one dict assignment on the loop thread
            self._states[name] = ("READY", "")
            for entry in fresh.values():
                if self.metrics:
                    self.metrics.track_model(name, entry.version, entry.load_seconds, entry.queue_depth,
                                             entry.in_flight, entry.stats, memory_bytes=entry.memory_bytes,
                                             queue_capacity=entry.config.max_queue_size)
            for entry in old.values():
                task = asyncio.get_running_loop().create_task(self._retire(entry, keep_metrics=entry.version in fresh))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            await self._enforce_memory_budget(keep=name)
            return list(fresh.values())

    async def _build(self, name: str, version: str, path: Path, overrides: Mapping[str, Any]) -> ModelEntry:
        config = load_serving_settings(self.defaults, path.parent if path.parent != self.root else path, path)
        if overrides:
            config = with_overrides(config, overrides)
        before = resident_memory_bytes()
        started = time.perf_counter()
        model, inputs = await anyio.to_thread.run_sync(self._load_model, name, path, config)
        load_seconds = time.perf_counter() - started
        memory = max(resident_memory_bytes() - before, model.package.size_bytes())
        stats = ModelStats()
        observer = _Fanout(stats, self.metrics.observer_for(name, version) if self.metrics else None)
        log.info("loaded %s/%s on %s in %.2fs; precision: %s", name, version, model, load_seconds,
                 model.load_info.precision_choice.get("reason", model.load_info.precision))
        return ModelEntry(name=name, version=version, path=path, config=config, model=model,
                          batcher=DynamicBatcher(model, config, observer, inputs, name=name), stats=stats,
                          load_seconds=load_seconds, memory_bytes=memory)

    def _load_model(self, name: str, path: Path, config: ServingSettings) -> tuple[CompiledModel, BatchInputs | None]:
        """On a worker thread: compile the model and, for a text model, read its tokenizer; `name` is the served name
        that errors about requests use."""
        model = load(path, compute_units=config.compute_units, precision=config.precision, threads=config.threads,
                     streams=config.instances, max_in_flight=self.max_in_flight, warmup_rows=config.max_batch_size)
        return model, TextInputs(model, name=name, chunk_rows=config.max_batch_size) if takes_text(model) else None

    async def unload(self, name: str) -> None:
        check_name(name)
        async with self._load_lock:
            entries = self._entries.pop(name, None)
            if entries is None:
                raise ModelNotFound(f"model {name!r} is not loaded; loaded: {self.names()}")
            self._states[name] = ("UNLOADING", "")
            await asyncio.gather(*(self._retire(entry) for entry in entries.values()))
            self._states[name] = ("UNAVAILABLE", "unloaded")

    async def _retire(self, entry: ModelEntry, keep_metrics: bool = False) -> None:
        await entry.batcher.close(drain=True)
        await anyio.to_thread.run_sync(entry.model.close)
        if self.metrics and not keep_metrics:
            self.metrics.forget_model(entry.name, entry.version)
        log.info("unloaded %s/%s", entry.name, entry.version)

    async def _enforce_memory_budget(self, keep: str) -> None:
        """Evict least-recently-used models until the loaded ones fit in --max-memory."""
        if self.max_memory_bytes is None:
            return
        while sum(e.memory_bytes for e in self.entries()) > self.max_memory_bytes:
            candidates = [e for e in self.entries() if e.name != keep]
            if not candidates:
                return
            victim = min(candidates, key=lambda e: e.last_used)
            entries = self._entries.pop(victim.name, {})
            self._states[victim.name] = ("UNAVAILABLE", "evicted to stay within --max-memory")
            log.warning("evicting %s to stay within the memory budget", victim.name)
            await asyncio.gather(*(self._retire(e) for e in entries.values()))

    async def poll_forever(self, interval_s: float) -> None:
        """Polling mode: load new or changed models, unload removed ones."""
        seen = {name: self._fingerprint(versions) for name, versions in discover(self.root).items()}
        while True:
            await asyncio.sleep(interval_s)
            current = {name: self._fingerprint(versions) for name, versions in discover(self.root).items()}
            for name, fingerprint in current.items():
                if seen.get(name) != fingerprint:
                    try:
                        await self.load(name)
                    except InferdError as exc:
                        log.error("could not load %s: %s", name, exc.message)
            for name in set(self._entries) - set(current):
                await self.unload(name)
            seen = current

    @staticmethod
    def _fingerprint(versions: dict[str, Path]) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((v, (p / MANIFEST_FILE).stat().st_mtime) for v, p in versions.items()))

    async def close(self) -> None:
        entries = self.entries()
        self._entries.clear()
        await asyncio.gather(*(self._retire(entry) for entry in entries), *self._retiring)
