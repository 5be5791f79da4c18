"""Backends, one module each; only the ones whose library imports are offered."""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache

from inferd.runtime.backends.base import Backend, Engine, EngineOptions
from inferd.runtime.devices import Device

__all__ = ["Backend", "Engine", "EngineOptions", "available_backends", "backend_named", "devices"]


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


def devices() -> list[Device]:
    """Every (backend, device) pair this installation can run models on."""
    return [device for backend in available_backends() for device in backend.devices()]


def backend_named(name: str) -> Backend:
    for backend in available_backends():
        if backend.name == name:
            return backend
    names = [b.name for b in available_backends()]
    from inferd.errors import BackendUnavailable

    needs = f" ({_NEEDS[name]})" if name in _NEEDS else ""
    raise BackendUnavailable(f"backend {name!r} is not available here{needs}; choose one of {names} or 'auto'")


# What each backend that `available_backends` may leave out needs, for the error that names it.
_NEEDS = {"openvino": "install the openvino package", "onnxruntime": "install the onnxruntime package",
          "coreml": "Core ML runs on macOS only"}
