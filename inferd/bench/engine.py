"""Engine benchmark: how fast each backend × precision runs a package, and what inferd adds on top.

For every configuration it times the bare backend call (the floor) and the same
inference through `CompiledModel.predict` (what users get), in one process and
one run, so the ratio between them is meaningful on a noisy machine. The
configurations are interleaved round by round so a burst of noise hits them all.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from inferd.bench import macs
from inferd.bench.peak import MachinePeaks
from inferd.bench.roofline import roofline
from inferd.package import ModelPackage
from inferd.runtime import CompiledModel, load
from inferd.runtime.selection import example_feeds
from inferd.types import Precision


@dataclass
class Stats:
    """Latency statistics in milliseconds plus throughput in inferences per second (batch × calls / s)."""

    samples: int
    mean_ms: float
    median_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    throughput_per_s: float

    @classmethod
    def of(cls, seconds: list[float], batch: int) -> Stats:
        ms = np.asarray(seconds) * 1000
        return cls(
            samples=len(ms), mean_ms=float(ms.mean()), median_ms=float(np.median(ms)),
            p95_ms=float(np.percentile(ms, 95)), p99_ms=float(np.percentile(ms, 99)), min_ms=float(ms.min()),
            throughput_per_s=float(batch * len(ms) / (ms.sum() / 1000)),
        )


@dataclass
class ConfigResult:
    name: str
    backend: str
    device: str
    precision: str
    is_default: bool
    raw: Stats
    inferd: Stats
    load_seconds: float
    roofline: dict[str, Any] | None = None  # inferd.bench.roofline.Roofline of the raw call's median


@dataclass
class EngineReport:
    package: str
    batch: int
    machine: dict[str, Any]
    configs: list[ConfigResult] = field(default_factory=list)
    baseline: Stats | None = None
    baseline_name: str | None = None
    operations: dict[str, Any] | None = None  # inferd.bench.macs.OpCount of one batch, where peaks were given
    peaks: dict[str, Any] | None = None  # inferd.bench.peak.MachinePeaks
    # every timed call in ms (inferd's predict per configuration, and the baseline's): plots draw their spread
    timings_ms: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["timings_ms"]  # thousands of numbers; the Stats keep what a report compares
        data["summary"] = self.summary()
        return data

    def summary(self) -> dict[str, float | str | None]:
        """The ratios that the acceptance criteria and users care about, computed from this run only."""
        default = next((c for c in self.configs if c.is_default), None)
        if default is None or not self.configs:
            return {}
        best_raw = min(self.configs, key=lambda c: c.raw.median_ms)
        return {
            "default_config": default.name,
            "default_median_ms": default.inferd.median_ms,
            "best_raw_config": best_raw.name,
            "best_raw_median_ms": best_raw.raw.median_ms,
            "default_vs_best_raw": default.inferd.median_ms / best_raw.raw.median_ms,
            "speedup_vs_baseline": (self.baseline.median_ms / default.inferd.median_ms) if self.baseline else None,
        }


def _time_calls(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def torch_baseline(factory: str, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    """Eager PyTorch fp32 on the same inputs, from the manifest's 'module:function' source factory."""
    import torch

    module_name, _, function = factory.partition(":")
    model = getattr(importlib.import_module(module_name), function)()
    tensors = [torch.from_numpy(value) for value in feeds.values()]

    def call() -> object:
        with torch.inference_mode():
            return model(*tensors)

    return call


def run_engine_benchmark(
    package_path: str,
    *,
    batch: int = 1,
    runs: int = 200,
    warmup: int = 20,
    precisions: tuple[Precision, ...] = (Precision.AUTO, Precision.FP32, Precision.BF16, Precision.FP16),
    torch_factory: str | None = None,
    peaks: MachinePeaks | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> EngineReport:
    """Time every configuration; with `peaks` (measured before any model loads: idle models' thread pools spin)
    also count the graph's MACs and place each configuration's raw call against the roof of its precision."""
    package = ModelPackage.load(package_path)
    from inferd.runtime.devices import cpu_count, cpu_features, cpu_name

    report = EngineReport(package=package_path, batch=batch,
                          machine={"cpu": cpu_name(), "cores": cpu_count(), "features": list(cpu_features())})
    default = load(package)
    feeds = {name: np.repeat(value, batch, axis=0) for name, value in
             example_feeds({s.name: (s.shape, s.dtype) for s in package.manifest.graph_inputs}).items()}
    operations = macs.count(package.onnx_model, feeds) if peaks else None
    models: dict[str, tuple[CompiledModel, bool]] = {}
    for backend in ("openvino", "onnxruntime"):
        for precision in precisions:
            try:
                model = load(package, backend=backend, precision=precision)
            except Exception:
                continue
            key = f"{model.load_info.backend}:{model.load_info.device} {model.load_info.precision}"
            if key not in models:
                is_default = (model.load_info.backend, model.load_info.device, model.load_info.precision) == (
                    default.load_info.backend, default.load_info.device, default.load_info.precision)
                models[key] = (model, is_default)
    calls: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for key, (model, _) in models.items():
        calls[key] = (model.engine.raw_call(feeds), functools.partial(model.predict, feeds))
    baseline = torch_baseline(torch_factory, feeds) if torch_factory else None

    samples: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in calls}
    baseline_samples: list[float] = []
    for raw, wrapped in calls.values():
        _time_calls(raw, warmup)
        _time_calls(wrapped, warmup)
    if baseline:
        _time_calls(baseline, max(3, warmup // 4))
    rounds = 10
    per_round = max(1, runs // rounds)
    for round_index in range(rounds):
        progress(f"round {round_index + 1}/{rounds}")
        for key, (raw, wrapped) in calls.items():
            samples[key][0].extend(_time_calls(raw, per_round))
            samples[key][1].extend(_time_calls(wrapped, per_round))
        if baseline:
            baseline_samples.extend(_time_calls(baseline, max(2, per_round // 4)))
    for key, (model, is_default) in models.items():
        raw_times, wrapped_times = samples[key]
        bare = Stats.of(raw_times, batch)
        place = (roofline(operations, batch, model.load_info.precision, bare.median_ms, peaks).as_dict()
                 if operations and peaks else None)
        report.configs.append(ConfigResult(
            name=key, backend=model.load_info.backend, device=model.load_info.device,
            precision=model.load_info.precision, is_default=is_default,
            raw=bare, inferd=Stats.of(wrapped_times, batch), load_seconds=model.load_info.seconds, roofline=place,
        ))
        report.timings_ms[key] = [1000 * t for t in wrapped_times]
    if baseline:
        report.baseline = Stats.of(baseline_samples, batch)
        report.baseline_name = "pytorch eager fp32"
        report.timings_ms[report.baseline_name] = [1000 * t for t in baseline_samples]
    if operations and peaks:
        report.operations = {**operations.as_dict(), "macs_per_sample": operations.macs // batch}
        report.peaks = peaks.as_dict()
    return report
