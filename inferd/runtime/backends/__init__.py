"""Backends, one module each; only the ones whose library imports are offered."""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache

from inferd.runtime.backends.base import Backend, Engine, EngineOptions

__all__ = ["Backend", "Engine", "EngineOptions", "available_backends", "backend_named"]


@lru_cache(maxsize=1)
def available_backends() -> tuple[Backend, ...]:
    found: list[Backend] = []
    if importlib.util.find_spec("openvino") is not None:
        from inferd.runtime.backends.openvino import OpenVINOBackend

        found.append(OpenVINOBackend())
    if importlib.util.find_spec("onnxruntime") is not None:
        from inferd.runtime.backends.onnxruntime import OnnxRuntimeBackend

        found.append(OnnxRuntimeBackend())
    if sys.platform == "darwin" and importlib.util.find_spec("coremltools") is not None:  # Core ML predicts on macOS only
        from inferd.runtime.backends.coreml import CoreMLBackend

        found.append(CoreMLBackend())
    return tuple(found)


def backend_named(name: str) -> Backend:
    for backend in available_backends():
        if backend.name == name:
            return backend
    names = [b.name for b in available_backends()]
    from inferd.errors import BackendUnavailable

    where = " (Core ML runs on macOS only)" if name == "coreml" and sys.platform != "darwin" else ""
    raise BackendUnavailable(f"backend {name!r} is not available here{where}; choose one of {names} or 'auto'")
