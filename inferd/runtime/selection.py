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
from inferd.runtime.precision import plan
from inferd.types import ComputeUnit, Precision

DYNAMIC_EXTENT = 16
"""Size of dynamic axes other than the batch in warm-up and selection inputs: a short sentence's tokens."""

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
    backends: tuple[Backend, ...], compute_units: ComputeUnit, precision: Precision, package_precision: str = "fp32"
) -> list[Candidate]:
    """Every (backend, device) of the allowed kinds that can compute the package at the requested precision."""
    kinds = _ALLOWED_KINDS[compute_units]
    return [
        Candidate(backend, device)
        for backend in backends
        for device in backend.devices()
        if device.kind in kinds and plan(backend, device, precision, package_precision) is not None
    ]


def _time_once(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def fastest(
    engines: dict[str, Engine], feeds: Mapping[str, np.ndarray], *, rounds: int = 8, budget_s: float = 1.0
) -> tuple[str, dict[str, float]]:
    """The engine with the lowest median latency, timed in interleaved rounds.

    Interleaving makes a burst of load from elsewhere on the machine hit every
    candidate alike instead of deciding the contest by itself.
    """
    calls = {label: functools.partial(engine.infer, feeds) for label, engine in engines.items()}
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for call in calls.values():
        call()
    per_call = max(min(_time_once(call) for call in calls.values()), 1e-5)
    per_round = max(2, int(budget_s / rounds / len(calls) / per_call))
    for _ in range(rounds):
        for label, call in calls.items():
            samples[label].extend(_time_once(call) for _ in range(per_round))
    timings = {label: float(np.median(times)) * 1000 for label, times in samples.items()}
    return min(timings, key=timings.__getitem__), timings


def example_feeds(engine_inputs: Mapping[str, tuple[tuple[int, ...], str]], rows: int = 1) -> dict[str, np.ndarray]:
    """Inputs for timing and warm-up: `rows` on a dynamic batch axis.

    Zeros would let some kernels shortcut, so floats are random: uniform draws
    in float32, several times cheaper than normal ones in float64 on a batch of
    images (a replica starting from zero waits for its warm-up). Integers are
    ones: a valid token id, an attention mask that attends everywhere, a valid
    class index; zeros would mask every token, a case no real request times.
    Other dynamic axes (a sequence) get a short but realistic extent.
    """
    rng = np.random.default_rng(0)
    feeds = {}
    for name, (shape, dtype) in engine_inputs.items():
        concrete = tuple((rows if axis == 0 else DYNAMIC_EXTENT) if d == -1 else d for axis, d in enumerate(shape))
        if np.dtype(dtype).kind == "f":
            feeds[name] = rng.random(concrete, dtype=np.float32).astype(dtype, copy=False)
        else:
            feeds[name] = np.ones(concrete, dtype=dtype)
    return feeds
