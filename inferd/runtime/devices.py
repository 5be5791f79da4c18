"""What this machine can compute on, as seen by each installed backend.

A device is reported once per backend that reaches it, because the same CPU is
a different target for OpenVINO (bf16 where AVX512-BF16/AMX exist) than for ONNX
Runtime (fp32/int8 only on x86).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

DeviceKind = Literal["cpu", "gpu", "npu"]

_INTERESTING_CPU_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile", "neon", "asimd", "sve",
)


@dataclass(frozen=True)
class Device:
    """One compute device as one backend reaches it."""

    backend: str
    id: str  # the backend's own device name: "CPU", "GPU.0", "CUDAExecutionProvider"
    kind: DeviceKind
    name: str
    precisions: tuple[str, ...]
    features: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.backend}:{self.id}"

    def as_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend, "id": self.id, "kind": self.kind, "name": self.name,
            "precisions": list(self.precisions), "features": list(self.features),
        }


def cpu_count() -> int:
    """Cores this process may run on (the affinity mask, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_features() -> tuple[str, ...]:
    """The instruction-set extensions that decide which precisions run natively."""
    cpuinfo = Path("/proc/cpuinfo")
    flags: set[str] = set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = set(line.split(":", 1)[1].split())
                break
    elif platform.machine() == "arm64":
        flags = {"neon", "asimd"}
    return tuple(flag for flag in _INTERESTING_CPU_FLAGS if flag in flags)


def cpu_native_precisions() -> tuple[str, ...]:
    features = set(cpu_features())
    precisions = ["fp32", "int8"]
    if features & {"avx512_bf16", "amx_bf16"}:
        precisions.insert(1, "bf16")
    if "avx512_fp16" in features or "asimd" in features:
        precisions.insert(1, "fp16")
    return tuple(precisions)
