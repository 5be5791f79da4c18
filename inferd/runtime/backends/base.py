"""The contract every backend module fulfils, so selection, caching and CompiledModel stay backend-blind."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from inferd.runtime.devices import Device
from inferd.types import Precision


@dataclass(frozen=True)
class EngineOptions:
    """How to spend the machine on one compiled model.

    `streams` is how many inferences may run at once on the model, each on its
    share of `threads` (OpenVINO streams, one ONNX Runtime session per stream).
    `spin` keeps idle worker threads spinning between runs. It matters with one
    stream: EfficientNet-Lite0 on ONNX Runtime, 2 threads, batch 1, gave 162
    img/s spinning and 129 without, and the server measured no loss from it
    (its event loop runs while the engine is between batches).
    """

    threads: int
    streams: int = 1
    spin: bool = True


class Engine(Protocol):
    """One model compiled for one device; `infer` is safe to call from many threads."""

    device: Device
    precision: str

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def raw_call(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """The bare backend call on prepared inputs, as a baseline for measuring inferd's own overhead."""
        ...


class Backend(Protocol):
    name: str

    def version(self) -> str: ...

    def devices(self) -> list[Device]: ...

    def effective_precision(self, device: Device, precision: Precision) -> str | None:
        """The precision the device will compute in, or None when it cannot honour the request."""
        ...

    def compile(
        self, model_path: Path, device: Device, precision: Precision, cache_dir: Path, options: EngineOptions,
        *, outputs: Sequence[str] = (),
    ) -> tuple[Engine, bool]:
        """Compile, reusing `cache_dir` when it holds an earlier result; also says whether it did.

        `outputs` are the graph's output names, which the engine's results must carry whatever names the
        backend gives its own tensors (OpenVINO names an fp16 graph's outputs after the casts before them).
        """
        ...
