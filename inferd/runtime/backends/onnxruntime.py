"""ONNX Runtime: the CPU execution provider here, CUDA/TensorRT/CoreML providers where installed.

The compiled-model cache is ORT's optimized-model file: graph optimizations run
once and the result is saved, so a later load skips them.

Streams are separate sessions, each with its share of the threads, like
OpenVINO's: concurrent runs on one session would share one intra-op pool and
wait at each other's barriers, while a single-threaded session per core keeps
every core busy with no synchronisation at all (the figures are in
benchmarks/results/engine-efficientnet-lite0.json, "notes").
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.errors import BackendUnavailable
from inferd.runtime.backends.base import EngineOptions
from inferd.runtime.devices import Device, cpu_features, cpu_name
from inferd.types import Precision

_PROVIDERS = {
    "CPUExecutionProvider": ("cpu", ("fp32", "int8")),
    "CUDAExecutionProvider": ("gpu", ("fp32", "fp16", "int8")),
    "ROCMExecutionProvider": ("gpu", ("fp32", "fp16", "int8")),
    "CoreMLExecutionProvider": ("npu", ("fp32", "fp16")),
}
_OPTIMIZED_FILE = "model.optimized.onnx"


class OnnxRuntimeEngine:
    def __init__(self, sessions: list[Any], device: Device) -> None:
        self.device = device
        self.precision = "fp32"
        self._session = sessions[0]
        self._output_names = [output.name for output in self._session.get_outputs()]
        # One session is shared by every caller (InferenceSession.run is thread-safe); several are lent out in turn.
        self._idle: queue.SimpleQueue[Any] | None = None
        if len(sessions) > 1:
            self._idle = queue.SimpleQueue()
            for session in sessions:
                self._idle.put(session)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._idle is None:
            results = self._session.run(self._output_names, dict(feeds))
        else:
            session = self._idle.get()
            try:
                results = session.run(self._output_names, dict(feeds))
            finally:
                self._idle.put(session)
        return dict(zip(self._output_names, results, strict=True))

    def raw_call(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        prepared = dict(feeds)
        return lambda: self._session.run(None, prepared)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def version(self) -> str:
        import onnxruntime

        return str(onnxruntime.__version__)

    def devices(self) -> list[Device]:
        import onnxruntime

        found = []
        for provider in onnxruntime.get_available_providers():
            if provider not in _PROVIDERS:
                continue
            kind, precisions = _PROVIDERS[provider]
            found.append(Device(
                backend=self.name, id=provider, kind=kind,  # type: ignore[arg-type]
                name=cpu_name() if kind == "cpu" else provider.removesuffix("ExecutionProvider"),
                precisions=precisions, features=cpu_features() if kind == "cpu" else (),
            ))
        return found

    def effective_precision(self, device: Device, precision: Precision) -> str | None:
        # ORT computes in the model's own types; it never lowers fp32 on its own.
        return "fp32" if precision in (Precision.AUTO, Precision.FP32) else None

    def compile(
        self, model_path: Path, device: Device, precision: Precision, cache_dir: Path, options: EngineOptions,
        *, outputs: Sequence[str] = (),
    ) -> tuple[OnnxRuntimeEngine, bool]:
        if self.effective_precision(device, precision) is None:
            raise BackendUnavailable(
                f"ONNX Runtime does not lower precision to {precision.value}; convert the package with "
                "`inferd optimize --pipeline fp16` or use the openvino backend"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        optimized = cache_dir / _OPTIMIZED_FILE
        cached = optimized.is_file()
        threads = max(1, options.threads // options.streams)
        sessions = []
        if not cached:
            staging = cache_dir / f".{_OPTIMIZED_FILE}.{os.getpid()}"
            sessions.append(_session(model_path, device, threads, options.spin, optimize=True, save_to=staging))
            if staging.is_file():
                staging.replace(optimized)
        while len(sessions) < options.streams:
            have_optimized = optimized.is_file()
            sessions.append(_session(optimized if have_optimized else model_path, device, threads, options.spin,
                                     optimize=not have_optimized))
        return OnnxRuntimeEngine(sessions, device), cached


def _session(source: Path, device: Device, threads: int, spin: bool, *, optimize: bool,
             save_to: Path | None = None) -> Any:
    """A session that runs ORT's graph optimizations (saving the result to `save_to`), or one on an optimized file."""
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    session_options.log_severity_level = 3
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    # Memory patterns are planned and kept per input shape, so with a dynamic batch every new batch size
    # takes more memory for good, at no gain in speed (benchmarks/results/engine-efficientnet-lite0.json, "notes").
    session_options.enable_mem_pattern = False
    session_options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                                else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if save_to is not None:
        session_options.optimized_model_filepath = str(save_to)
    try:
        return onnxruntime.InferenceSession(str(source), session_options, providers=[device.id])
    except Exception as exc:
        raise BackendUnavailable(f"ONNX Runtime could not load the model on {device.id}: {exc}") from exc
