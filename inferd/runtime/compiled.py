"""CompiledModel: a package compiled for one device, with checked inputs (`feeds.py`) and bounded concurrency.

Sync calls run on the caller's thread (the backends release the GIL); async calls
run on a private thread pool so an event loop is never blocked, and a bound on
in-flight predictions keeps a burst from queueing without limit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from inferd.errors import Overloaded
from inferd.manifest import Manifest
from inferd.package import ModelPackage
from inferd.runtime.backends import Engine
from inferd.runtime.batches import rows, split, stack
from inferd.runtime.feeds import check_feeds

OverflowPolicy = Literal["wait", "reject"]


@dataclass(frozen=True)
class LoadInfo:
    """How the model got here: which backend won, whether the compile came from the cache, and how long it took."""

    backend: str
    device: str
    precision: str
    cached: bool
    seconds: float
    compile_seconds: float
    selection_ms: dict[str, float] = field(default_factory=dict)
    conversion_cached: bool | None = None
    """For a model file converted on the fly: True when its package came from the conversion cache."""
    precision_choice: dict[str, Any] = field(default_factory=dict)
    """Why the model computes in `precision` (see inferd.runtime.precision.PrecisionChoice)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend, "device": self.device, "precision": self.precision, "cached": self.cached,
            "seconds": round(self.seconds, 4), "compile_seconds": round(self.compile_seconds, 4),
            "selection_ms": {k: round(v, 3) for k, v in self.selection_ms.items()},
            "conversion_cached": self.conversion_cached, "precision_choice": self.precision_choice,
        }


class CompiledModel:
    def __init__(
        self,
        package: ModelPackage,
        engine: Engine,
        load_info: LoadInfo,
        *,
        max_in_flight: int = 64,
        overflow: OverflowPolicy = "wait",
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.package = package
        self.manifest: Manifest = package.manifest
        self.engine = engine
        self.load_info = load_info
        self.max_in_flight = max_in_flight
        self.overflow = overflow
        self._executor = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix=f"inferd-{self.manifest.name}")
        self._in_flight = 0
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def in_flight(self) -> int:
        """Async predictions admitted and not yet finished."""
        return self._in_flight

    def __repr__(self) -> str:
        info = self.load_info
        return f"<CompiledModel {self.name} on {info.backend}:{info.device} {info.precision}>"

    # -- prediction --------------------------------------------------------------------------

    def predict(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One inference on one example or one pre-batched set of arrays.

        A text model takes its token tensors (see `inferd.io.tokenize`), like a
        Core ML model; `inferd.io.embed(model, texts)` does both steps.
        """
        return self.engine.infer(self.check_inputs(inputs))

    def predict_batch(self, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Many examples; stacked into one batch when the model has a dynamic batch dimension.

        Examples whose other dimensions differ (token sequences of different
        lengths) cannot be stacked, so they run one by one.
        """
        if not examples:
            return []
        checked = [self.check_inputs(example) for example in examples]
        shapes = {tuple(value.shape[1:] for value in feeds.values()) for feeds in checked}
        if not self.manifest.batch_dynamic or len(checked) == 1 or len(shapes) > 1:
            return [self.engine.infer(feeds) for feeds in checked]
        return split(self.engine.infer(stack(checked)), [rows(feeds) for feeds in checked])

    async def predict_async(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Like `predict`, off the event loop; past `max_in_flight` it waits or raises Overloaded per `overflow`.

        Cancelling the awaiting task abandons the result; the slot is freed only
        when the inference really ends, so the bound holds for running work too.
        """
        feeds = self.check_inputs(inputs)
        loop = asyncio.get_running_loop()
        slots = self._slots_for(loop)
        if self.overflow == "reject" and slots.locked():
            raise Overloaded(f"model {self.name!r} already runs {self.max_in_flight} predictions; retry shortly")
        await slots.acquire()
        self._in_flight += 1
        try:
            future = self._executor.submit(self.engine.infer, feeds)
        except BaseException:
            self._release(slots)
            raise
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, slots))
        return await asyncio.wrap_future(future)

    def _slots_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        with self._lock:
            if self._slots is None or self._slots_loop is not loop:
                self._slots = asyncio.Semaphore(self.max_in_flight)
                self._slots_loop = loop
            return self._slots

    def _release(self, slots: asyncio.Semaphore) -> None:
        self._in_flight -= 1
        slots.release()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # -- input checking ----------------------------------------------------------------------

    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Arrays in the model's dtype and rank, or an InvalidInput that says which input is wrong and how."""
        return check_feeds(self.name, self.manifest, inputs)
