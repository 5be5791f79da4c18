"""ONNX Runtime: the CPU execution provider here, CUDA/TensorRT/CoreML providers where installed.

The compiled-model cache is ORT's optimized-model file: graph optimizations run
once and the result is saved, so a later load skips them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
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
    def __init__(self, session: Any, device: Device) -> None:
        self.device = device
        self.precision = "fp32"
        self._session = session
        self._output_names = [output.name for output in session.get_outputs()]

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # InferenceSession.run is thread-safe; concurrent runs share the intra-op pool.
        results = self._session.run(self._output_names, dict(feeds))
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
        self, model_path: Path, device: Device, precision: Precision, cache_dir: Path, options: EngineOptions
    ) -> tuple[OnnxRuntimeEngine, bool]:
        import onnxruntime

        if self.effective_precision(device, precision) is None:
            raise BackendUnavailable(
                f"ONNX Runtime does not lower precision to {precision.value}; convert the package with "
                "`inferd optimize --pipeline fp16` or use the openvino backend"
            )
        cache_dir.mkdir(parents=True, exist_ok=True)
        optimized = cache_dir / _OPTIMIZED_FILE
        cached = optimized.is_file()
        session_options = onnxruntime.SessionOptions()
        session_options.log_severity_level = 3
        session_options.intra_op_num_threads = options.threads
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        staging = cache_dir / f".{_OPTIMIZED_FILE}.{os.getpid()}"
        if cached:
            source = optimized
            session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            source = model_path
            session_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
            session_options.optimized_model_filepath = str(staging)
        try:
            session = onnxruntime.InferenceSession(str(source), session_options, providers=[device.id])
        except Exception as exc:
            raise BackendUnavailable(f"ONNX Runtime could not load the model on {device.id}: {exc}") from exc
        if not cached and staging.is_file():
            staging.replace(optimized)
        return OnnxRuntimeEngine(session, device), cached
