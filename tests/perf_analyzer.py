"""Triton's own perf_analyzer, run against inferd: the binary from a pinned tritonclient wheel, never installed.

tritonclient's manylinux wheels up to the 2.41 line carry `perf_analyzer` as a
data file. It links Debian's libb64 (`apt-get install libb64-0d`) and
libcudart.so.12, which PyPI's `nvidia-cuda-runtime-cu12` wheel ships (the
library loads without a GPU). Both wheels are fetched as the zoo's are
(`pip download --no-deps` into `~/.cache/inferd-zoo`) and the two files are
extracted from them; the venv keeps its own, newer tritonclient.
"""

from __future__ import annotations

import csv
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.zoo import wheel_file

TRITONCLIENT = "tritonclient==2.41.0"
BINARY = "tritonclient-2.41.0.data/data/bin/perf_analyzer"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.9.79"
CUDART = "nvidia/cuda_runtime/lib/libcudart.so.12"


class Unavailable(Exception):
    """perf_analyzer cannot exist here: no x86-64 Linux, or its wheels cannot be fetched."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    library_dir: Path
    """Where libcudart.so.12 lies, for LD_LIBRARY_PATH."""

    @classmethod
    def fetch(cls) -> PerfAnalyzer:
        if sys.platform != "linux" or platform.machine() != "x86_64":
            raise Unavailable(f"perf_analyzer ships only in tritonclient's manylinux x86-64 wheel, not for "
                              f"{sys.platform} {platform.machine()}")
        try:
            binary, cudart = wheel_file(TRITONCLIENT, BINARY), wheel_file(CUDA_RUNTIME, CUDART)
        except subprocess.CalledProcessError as exc:
            raise Unavailable(f"pip could not fetch {TRITONCLIENT} or {CUDA_RUNTIME} (exit {exc.returncode})") from exc
        binary.chmod(0o755)
        found = cls(binary, cudart.parent)
        missing = [line.split()[0] for line in found._ldd().splitlines() if "not found" in line]
        if missing:
            raise RuntimeError(f"perf_analyzer needs {', '.join(missing)}: apt-get install libb64-0d")
        return found

    def _ldd(self) -> str:
        return subprocess.run(["ldd", str(self.binary)], capture_output=True, text=True,
                              env={"LD_LIBRARY_PATH": str(self.library_dir)}).stdout

    def run(self, address: str, model: str, report: Path, *, protocol: str = "http", concurrency: str = "1:8:7",
            window: tuple[str, ...] = ("--measurement-mode", "count_windows", "--measurement-request-count", "16"),
            stability_percent: int = 10, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        """perf_analyzer -m MODEL -u ADDRESS (host:port) -i PROTOCOL over the concurrency range, writing its CSV
        report to `report`; `window` are its measurement options."""
        return subprocess.run(
            [str(self.binary), "-m", model, "-u", address, "-i", protocol, "--concurrency-range", concurrency,
             *window, "--stability-percentage", str(stability_percent), "-f", str(report)],
            capture_output=True, text=True, timeout=timeout_s, cwd=report.parent,
            env={"LD_LIBRARY_PATH": str(self.library_dir), "PATH": "/usr/bin:/bin"},
        )


def read_report(path: Path) -> list[dict[str, float]]:
    """perf_analyzer's CSV report: one row per concurrency, throughput in inferences/s, times in microseconds."""
    with open(path, newline="") as report:
        return sorted(({name: float(value) for name, value in row.items()} for row in csv.DictReader(report)),
                      key=lambda row: row["Concurrency"])
