"""This machine's compute peak per precision: the denominator of the roofline, measured once and cached.

Why measured rather than computed from clock × vector width × FMA ports: the
clock under load, the number of FMA ports and whether AMX tiles are usable in
this process are not readable from userspace, and a theoretical figure no
kernel reaches would make every model look inefficient. Why OpenVINO: it is the
engine that runs the models, and its oneDNN kernels pick the widest
instructions the CPU has (AVX2 FMA, AVX-512, VNNI, AVX512-BF16, AMX) at run
time, so each precision is timed on the instructions a model of that precision
really gets, and the kernel it picked (`brgemm_avx512_amx_bf16`,
`jit_avx2_...`) names them. numpy would measure only fp32, and its BLAS is not
what the models run on.

Each precision is timed on three shapes a network's time goes to: a 3×3
convolution, a fully connected layer (constant weights) and a matrix product of
two inputs (attention), each single-threaded and on all the threads this process
may use, keeping the fastest of repeated runs: on a shared machine, noise only
ever slows a run down. int8 is a FakeQuantize pair on data and weights, the
pattern OpenVINO turns into integer kernels (VNNI or AMX-INT8 where they exist).
A precision the CPU has no kernel for (bf16 without AVX512-BF16/AMX, fp16
without AVX512-FP16) is reported absent, with what OpenVINO did instead (ran it
in another precision, or found no kernel), rather than timed as if native.

The result is cached in inferd's cache directory, keyed by CPU model, CPU flags,
thread count, OpenVINO version and oneDNN's ISA cap (`ONEDNN_MAX_CPU_ISA`, which
makes the same CPU a smaller one), so `inferd bench` measures it once per
machine; `refresh=True` measures again (on a machine that was busy the first time).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferd.runtime.cache import cache_root, mark_used, read_json, write_json
from inferd.runtime.devices import cpu_count, cpu_features, cpu_name

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
_NATIVE = {"fp32": {"f32"}, "bf16": {"bf16"}, "fp16": {"f16"}, "int8": {"u8", "i8"}}
_SCHEMA = 1  # bump when the measurement changes, so cached peaks of the old one are not compared with new ones
_MAC_LAYERS = {"Convolution", "FullyConnected", "MatMul"}


@dataclass(frozen=True)
class Peak:
    """One precision's best measured throughput in GOP/s (2 operations per multiply-accumulate)."""

    precision: str
    one_thread_gops: float | None = None
    all_threads_gops: float | None = None
    kernel: str | None = None  # OpenVINO's primitive for the fastest shape: it names the instructions used
    absent: str | None = None  # why there is no native peak for this precision here


@dataclass(frozen=True)
class MachinePeaks:
    cpu: str
    features: tuple[str, ...]
    threads: int
    openvino: str
    peaks: dict[str, Peak] = field(default_factory=dict)
    cached: bool = False

    def gops(self, precision: str) -> float | None:
        """The peak a model computing in `precision` on all threads can reach, None where it has none here.

        All threads can always run as one, so a one-thread figure above the all-threads one (other work had the
        other cores while it was measured) is the better bound."""
        peak = self.peaks.get(precision)
        if peak is None or peak.all_threads_gops is None:
            return None
        return max(peak.all_threads_gops, peak.one_thread_gops or 0.0)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachinePeaks:
        peaks = {name: Peak(**value) for name, value in data["peaks"].items()}
        return cls(cpu=data["cpu"], features=tuple(data["features"]), threads=data["threads"],
                   openvino=data["openvino"], peaks=peaks, cached=True)


def _fake_quantize(value: Any, levels: int) -> Any:
    from openvino import opset13 as ops

    low, high = ops.constant(np.float32(-4)), ops.constant(np.float32(4))
    return ops.fake_quantize(value, low, high, low, high, levels)


def _shapes(int8: bool) -> list[tuple[str, Callable[[], tuple[Any, list[np.ndarray], int]]]]:
    """(name, build) for each shape timed: build returns the OpenVINO model, its inputs and its MACs per run."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(0)
    data = (lambda v: _fake_quantize(v, 256)) if int8 else (lambda v: v)
    weights = (lambda v: _fake_quantize(v, 255)) if int8 else (lambda v: v)  # symmetric: what LPT makes int8

    def conv() -> tuple[Any, list[np.ndarray], int]:
        channels, size = 384, 28
        x = ops.parameter([1, channels, size, size], np.float32)
        w = ops.constant(rng.standard_normal((channels, channels, 3, 3)).astype(np.float32))
        y = ops.convolution(data(x), weights(w), [1, 1], [1, 1], [1, 1], [1, 1])
        return ov.Model([y], [x]), [rng.standard_normal((1, channels, size, size)).astype(np.float32)], \
            channels * channels * 9 * size * size

    def fully_connected() -> tuple[Any, list[np.ndarray], int]:
        n = 1024
        x = ops.parameter([n, n], np.float32)
        w = ops.constant(rng.standard_normal((n, n)).astype(np.float32))
        return ov.Model([ops.matmul(data(x), weights(w), False, False)], [x]), \
            [rng.standard_normal((n, n)).astype(np.float32)], n ** 3

    def product() -> tuple[Any, list[np.ndarray], int]:
        n = 1024
        a, b = ops.parameter([n, n], np.float32), ops.parameter([n, n], np.float32)
        return ov.Model([ops.matmul(data(a), data(b), False, False)], [a, b]), \
            [rng.standard_normal((n, n)).astype(np.float32) for _ in range(2)], n ** 3

    return [("conv3x3", conv), ("fully_connected", fully_connected), ("matmul", product)]


def _time_best(run: Callable[[], object], seconds: float, at_least: int = 3) -> float:
    run()
    best, started, runs = float("inf"), time.perf_counter(), 0
    while runs < at_least or time.perf_counter() - started < seconds:
        begin = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - begin)
        runs += 1
    return best


def _kernel(compiled: Any) -> tuple[str, str]:
    """(primitive, runtime precision) of the multiply-accumulate layer OpenVINO compiled."""
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in _MAC_LAYERS:
            return info["primitiveType"].astype(str), info["runtimePrecision"].astype(str)
    return "unknown", "unknown"


def _first_sentence(exc: Exception) -> str:
    """OpenVINO's reason, without the source locations it stacks in front of it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def _measure(precision: str, threads: int, seconds: float) -> Peak:
    import openvino as ov

    core = ov.Core()
    counts = sorted({1, threads})
    best: dict[int, float] = {}
    kernel, elsewise = "", ""
    for _, build in _shapes(precision == "int8"):
        model, inputs, macs = build()
        for count in counts:
            config = {"INFERENCE_PRECISION_HINT": _HINTS[precision], "INFERENCE_NUM_THREADS": count,
                      "PERFORMANCE_HINT": "LATENCY"}
            try:
                compiled = core.compile_model(model, "CPU", config)
            except RuntimeError as exc:
                elsewise = f"OpenVINO has no {precision} kernel here: {_first_sentence(exc)}"
                continue
            primitive, runtime = _kernel(compiled)
            if runtime not in _NATIVE[precision]:
                elsewise = f"no native {precision} kernel on this CPU: OpenVINO runs it as {runtime} ({primitive})"
                continue
            gops = 2 * macs / _time_best(functools.partial(compiled.create_infer_request().infer, inputs), seconds)
            if gops / 1e9 > best.get(count, 0.0):
                best[count] = gops / 1e9
                kernel = primitive if count == threads else kernel
    if threads not in best:
        return Peak(precision, absent=elsewise or "not measured")
    return Peak(precision, one_thread_gops=round(best.get(1, 0.0), 1) or None,
                all_threads_gops=round(best[threads], 1), kernel=kernel)


def _cache_file(root: Path, key: list[Any]) -> Path:
    return root / "peaks" / f"{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]}.json"


def machine_peaks(*, refresh: bool = False, seconds: float = 0.3, root: Path | None = None,
                  progress: Callable[[str], None] = lambda _: None) -> MachinePeaks:
    """This machine's peaks, from the cache unless `refresh` or never measured; `seconds` per shape and thread count."""
    try:
        import openvino
    except ImportError:
        return MachinePeaks(cpu_name(), cpu_features(), cpu_count(), "none", {
            p: Peak(p, absent="OpenVINO is not installed: pip install openvino to measure peaks") for p in PRECISIONS})
    threads = cpu_count()
    isa_cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    key = [cpu_name(), list(cpu_features()), threads, str(openvino.__version__), isa_cap, _SCHEMA]
    path = _cache_file(cache_root(root), key)
    if not refresh and (data := read_json(path)) is not None:
        try:
            cached = MachinePeaks.from_dict(data)
            mark_used(path)
            return cached
        except (KeyError, TypeError):
            pass  # written by another layout: measure again
    peaks = {}
    for precision in PRECISIONS:
        progress(f"measuring the {precision} peak")
        peaks[precision] = _measure(precision, threads, seconds)
    result = MachinePeaks(cpu_name(), cpu_features(), threads, str(openvino.__version__), peaks)
    write_json(path, result.as_dict())
    return result
