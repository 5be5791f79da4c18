"""Core ML on macOS: the package exported as an ML program, compiled by Core ML, run through coremltools.

Registered only on macOS, the one system where coremltools can predict. The
compiled-model cache holds the `.mlmodelc` Core ML compiles the export into, so
a later load skips both the export and Core ML's compilation. The export keeps
tensors in and raw scores out (inferd preprocesses and ranks, as for every
backend) and a fixed batch of 1, because the Neural Engine runs fixed shapes
only; a batch is predicted row by row.

This module is written against coremltools' documented API and has not run on
the Linux machines this project is developed on; its tests run on macOS only.
"""

from __future__ import annotations

import os
import platform
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inferd.errors import BackendUnavailable
from inferd.runtime.backends.base import EngineOptions
from inferd.runtime.devices import Device, DeviceKind, cpu_features, cpu_name
from inferd.types import Precision

_COMPILED = "model.mlmodelc"
# Core ML chooses the unit per layer inside the allowed set; each set is one candidate for inferd's measurement.
_UNITS: dict[str, tuple[DeviceKind, tuple[str, ...]]] = {
    "CPU_ONLY": ("cpu", ("fp32", "fp16")),
    "CPU_AND_GPU": ("gpu", ("fp32", "fp16")),
    "CPU_AND_NE": ("npu", ("fp16",)),  # the Neural Engine computes in fp16 only
}


class CoreMLEngine:
    def __init__(self, model: Any, device: Device, precision: str, output_names: list[str]) -> None:
        self.device = device
        self.precision = precision
        self._model = model
        self._output_names = output_names
        # coremltools does not document its predict as thread-safe; one prediction at a time.
        self._lock = threading.Lock()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(next(iter(feeds.values())))
        results = []
        with self._lock:
            for row in range(rows):
                results.append(self._model.predict({name: value[row:row + 1] for name, value in feeds.items()}))
        return {name: np.concatenate([np.asarray(r[name]) for r in results]) for name in self._output_names}

    def raw_call(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        prepared = {name: value[:1] for name, value in feeds.items()}
        return lambda: self._model.predict(prepared)


class CoreMLBackend:
    name = "coreml"

    def version(self) -> str:
        import coremltools

        return str(coremltools.__version__)

    def devices(self) -> list[Device]:
        apple_silicon = platform.machine() == "arm64"
        return [
            Device(backend=self.name, id=unit, kind=kind,
                   name=cpu_name() if kind == "cpu" else "Apple Neural Engine" if kind == "npu" else "Apple GPU",
                   precisions=precisions, features=cpu_features() if kind == "cpu" else ())
            for unit, (kind, precisions) in _UNITS.items()
            if kind != "npu" or apple_silicon
        ]

    def effective_precision(self, device: Device, precision: Precision) -> str | None:
        # The precision is the ML program's, fixed at export: fp16 unless fp32 is asked for.
        wanted = "fp16" if precision in (Precision.AUTO, Precision.FP16) else precision.value
        return wanted if wanted in device.precisions else None

    def compile(
        self, model_path: Path, device: Device, precision: Precision, cache_dir: Path, options: EngineOptions,
        *, outputs: Sequence[str] = (),
    ) -> tuple[CoreMLEngine, bool]:
        import coremltools as ct

        from inferd.export import to_coreml
        from inferd.package import ModelPackage

        effective = self.effective_precision(device, precision)
        if effective is None:
            raise BackendUnavailable(f"{device.label} cannot compute in {precision.value}; it offers {device.precisions}")
        package = ModelPackage.load(model_path.parent)
        compiled = cache_dir / _COMPILED
        cached = compiled.is_dir()
        if not cached:
            cache_dir.mkdir(parents=True, exist_ok=True)
            exported = cache_dir / f".model.{os.getpid()}.mlpackage"
            staging = cache_dir / f".model.{os.getpid()}.mlmodelc"  # compile_model insists on the extension
            shutil.rmtree(staging, ignore_errors=True)
            to_coreml(package, exported, precision=effective, image_inputs=False, classifier=False, overwrite=True)
            try:
                ct.utils.compile_model(str(exported), str(staging))
            finally:
                shutil.rmtree(exported, ignore_errors=True)
            staging.rename(compiled)
        try:
            model = ct.models.CompiledMLModel(str(compiled), compute_units=ct.ComputeUnit[device.id])
        except Exception as exc:
            raise BackendUnavailable(f"Core ML could not load the model for {device.id}: {exc}") from exc
        outputs = [spec.name for spec in package.manifest.outputs]
        return CoreMLEngine(model, device, effective, outputs), cached
