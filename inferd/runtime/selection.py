"""Pick the backend and device for a model by timing them, not by a table.

Which backend wins depends on the model and the machine (ORT's int8 beats
OpenVINO on one network and loses by 2x on another), so the first load times
every eligible candidate briefly and the winner is remembered on disk.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from inferd.runtime.backends import Backend, Engine
from inferd.runtime.devices import Device
from inferd.types import ComputeUnit, Precision

_ALLOWED_KINDS = {
    ComputeUnit.ALL: {"cpu", "gpu", "npu"},
    ComputeUnit.CPU_ONLY: {"cpu"},
    ComputeUnit.CPU_AND_GPU: {"cpu", "gpu"},
    ComputeUnit.CPU_AND_NE: {"cpu", "npu"},
}


@dataclass(frozen=True)
class Candidate:
    backend: Backend
    device: Device

    @property
    def label(self) -> str:
        return self.device.label


def eligible(
    backends: tuple[Backend, ...], compute_units: ComputeUnit, precision: Precision
) -> list[Candidate]:
    kinds = _ALLOWED_KINDS[compute_units]
    return [
        Candidate(backend, device)
        for backend in backends
        for device in backend.devices()
        if device.kind in kinds and backend.effective_precision(device, precision) is not None
    ]


def median_latency_ms(call: Callable[[], object], *, budget_s: float = 0.4, min_runs: int = 5,
                      max_runs: int = 200) -> float:
    """Median of repeated calls within a time budget: enough to rank backends, short enough for a load."""
    call()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def example_feeds(engine_inputs: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
    """Batch-1 inputs for timing and warm-up: zeros would let some kernels shortcut, so use random values."""
    rng = np.random.default_rng(0)
    feeds = {}
    for name, (shape, dtype) in engine_inputs.items():
        concrete = tuple(1 if d == -1 else d for d in shape)
        if np.dtype(dtype).kind == "f":
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        else:
            feeds[name] = np.zeros(concrete, dtype=dtype)
    return feeds


def fastest(engines: dict[str, Engine], feeds: Mapping[str, np.ndarray]) -> tuple[str, dict[str, float]]:
    timings = {label: median_latency_ms(functools.partial(engine.infer, feeds)) for label, engine in engines.items()}
    return min(timings, key=timings.__getitem__), timings
