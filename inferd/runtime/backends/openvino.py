"""OpenVINO: CPU here (bf16 on AVX512-BF16/AMX), Intel GPUs and NPUs elsewhere.

OpenVINO's own `CACHE_DIR` is the compiled-model cache: a second compile of the
same model for the same device and settings imports the blob instead of
recompiling. It knows the model by its file's path, so it compiles from a link
inside the cache entry (see `_stable_path`). Inference requests are pooled because one request is not
re-entrant; a pool lets many threads infer at once, each on its own request.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from inferd.errors import BackendUnavailable
from inferd.runtime.backends.base import EngineOptions
from inferd.runtime.devices import Device, DeviceKind, cpu_features, cpu_name
from inferd.types import Precision

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@lru_cache(maxsize=1)
def _core() -> Any:
    import openvino

    return openvino.Core()


def _stable_path(model_path: Path, cache_dir: Path) -> Path:
    """A path to the model that is the same wherever the package lies.

    OpenVINO keys a cached blob by the model file's path, not its bytes: the same package served from another
    folder (a copy, a moved repository, a temporary one) compiled again, added a blob to the entry each time, and
    was still reported as a cached load. The entry's folder is keyed by the package's content, so links in it to
    the model and its external data give every copy of the package one path, and one blob.
    """
    for name in (model_path.name, f"{model_path.name}.data"):
        target, link = model_path.parent / name, cache_dir / name
        if not target.exists():
            continue
        target = target.resolve()
        if not link.is_symlink() or Path(os.readlink(link)) != target:
            staging = cache_dir / f".{name}.{os.getpid()}"
            staging.unlink(missing_ok=True)
            staging.symlink_to(target)
            staging.replace(link)  # atomic: a concurrent load sees the old link or the new one
    return cache_dir / model_path.name


class OpenVINOEngine:
    def __init__(self, compiled: Any, device: Device, precision: str, pool_size: int, outputs: Sequence[str]) -> None:
        self.device = device
        self.precision = precision
        self._compiled = compiled
        self._output_names = [_graph_name(port, outputs) for port in compiled.outputs]
        self._requests: queue.LifoQueue[Any] = queue.LifoQueue()
        for _ in range(pool_size):
            self._requests.put(compiled.create_infer_request())

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._requests.get()
        try:
            request.infer(feeds, share_inputs=True)
            # Copies: the request's output buffers are reused by the next inference.
            return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(self._output_names)}
        finally:
            self._requests.put(request)

    def raw_call(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        request = self._compiled.create_infer_request()
        prepared = dict(feeds)
        return lambda: request.infer(prepared, share_inputs=True)


def _graph_name(port: Any, outputs: Sequence[str]) -> str:
    """The graph's name for an output port. A port has several names (an fp16 graph's output also carries its
    cast's, `graph_output_cast_0`), and which one `get_any_name` picks differs between a fresh compile and one
    imported from the cache."""
    names = port.get_names()
    return next((name for name in outputs if name in names), port.get_any_name())


class OpenVINOBackend:
    name = "openvino"

    def version(self) -> str:
        import openvino

        return str(openvino.__version__)

    def devices(self) -> list[Device]:
        core = _core()
        found = []
        for device_id in core.available_devices:
            kind: DeviceKind = "cpu" if device_id.startswith("CPU") else "npu" if device_id.startswith("NPU") else "gpu"
            capabilities = set(core.get_property(device_id, "OPTIMIZATION_CAPABILITIES"))
            precisions = tuple(p for p, cap in (("fp32", "FP32"), ("bf16", "BF16"), ("fp16", "FP16"), ("int8", "INT8"))
                               if cap in capabilities)
            found.append(Device(
                backend=self.name, id=device_id, kind=kind,
                name=str(core.get_property(device_id, "FULL_DEVICE_NAME")) if kind != "cpu" else cpu_name(),
                precisions=precisions, features=cpu_features() if kind == "cpu" else (),
            ))
        return found

    def effective_precision(self, device: Device, precision: Precision) -> str | None:
        if precision is Precision.AUTO:
            # OpenVINO's default: the fastest native type of the device.
            for candidate in ("bf16", "fp16") if device.kind == "cpu" else ("fp16",):
                if candidate in device.precisions:
                    return candidate
            return "fp32"
        return precision.value if precision.value in device.precisions else None

    def compile(
        self, model_path: Path, device: Device, precision: Precision, cache_dir: Path, options: EngineOptions,
        *, outputs: Sequence[str] = (),
    ) -> tuple[OpenVINOEngine, bool]:
        effective = self.effective_precision(device, precision)
        if effective is None:
            raise BackendUnavailable(f"{device.label} cannot compute in {precision.value}; it offers {device.precisions}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = any(cache_dir.glob("*.blob"))
        config: dict[str, Any] = {"CACHE_DIR": str(cache_dir), "INFERENCE_PRECISION_HINT": _HINTS[effective]}
        if device.kind == "cpu":
            config["INFERENCE_NUM_THREADS"] = options.threads
        if options.streams == 1:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            config["PERFORMANCE_HINT"] = "THROUGHPUT"
            config["NUM_STREAMS"] = options.streams
        try:
            compiled = _core().compile_model(str(_stable_path(model_path, cache_dir)), device.id, config)
        except RuntimeError as exc:
            raise BackendUnavailable(f"OpenVINO could not compile the model for {device.id}: {exc}") from exc
        pool = max(options.streams, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        return OpenVINOEngine(compiled, device, effective, pool, outputs), cached
