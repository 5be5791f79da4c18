"""Where a configuration stands against this machine's compute roof: achieved GOP/s and the fraction of the peak.

A model's multiply-accumulates (`inferd.bench.macs`) divided by its measured
latency give the achieved throughput; the peak of the precision it computes in
(`inferd.bench.peak`) is the roof. A graph mixing int8 and float layers (a QDQ
model keeps some layers in float) has a roof of its own: the time its int8 MACs
take at the int8 peak plus the time the rest take at the float peak, which is
what the fraction compares the latency with. Only the MACs count: a depthwise
or elementwise layer is bound by memory, so a network rich in them (MobileNets,
EfficientNets) stays far below a GEMM peak however good the engine is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from inferd.bench.macs import OpCount
from inferd.bench.peak import MachinePeaks


@dataclass(frozen=True)
class Roofline:
    macs_per_sample: int
    int8_macs_per_sample: int
    achieved_gops: float  # 2 operations per MAC, the whole batch, over the latency
    peak_gops: float | None  # the roof for this mix of precisions; None where a precision it needs has no peak here
    fraction: float | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def roofline(count: OpCount, batch: int, precision: str, latency_ms: float, peaks: MachinePeaks) -> Roofline:
    """`count` is the whole batch's; `precision` the one the backend computes float layers in."""
    seconds = latency_ms / 1000
    float_macs, int8_macs = count.macs - count.int8_macs, count.int8_macs
    ideal, missing = 0.0, []
    for macs, kind in ((float_macs, precision), (int8_macs, "int8")):
        if not macs:
            continue
        peak = peaks.gops(kind)
        if peak is None:
            found = peaks.peaks.get(kind)
            missing.append(f"{kind}: {found.absent if found and found.absent else 'no peak measured'}")
        else:
            ideal += 2 * macs / (peak * 1e9)
    achieved = 2 * count.macs / seconds / 1e9 if seconds > 0 else 0.0
    unknown = f"{len(count.unknown)} layers of unknown shape not counted" if count.unknown else ""
    if missing or not count.macs:
        note = "; ".join([*missing, unknown] if missing else [unknown or "no multiply-accumulates counted"])
        return Roofline(count.macs // batch, int8_macs // batch, achieved, None, None, note.strip("; "))
    return Roofline(count.macs // batch, int8_macs // batch, achieved, 2 * count.macs / ideal / 1e9, ideal / seconds,
                    unknown)
