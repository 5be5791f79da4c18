"""Peak memory of `inferd optimize --pipeline int8 --report` on the 736x736 PP-OCRv4 text detector.

Calibration and evaluation stream their samples (one calibration sample's
tensors at a time, a batch of evaluation inputs and outputs at a time), so the
peak should not grow with the number of samples. Before that, this command
passed 23 GB and was killed. The command runs as a user runs it, under
`/usr/bin/time -v`, whose "Maximum resident set size" is the figure recorded,
with the CPU's flags (int8 and bf16 paths differ between machines).

Run: .venv/bin/python benchmarks/optimize_memory.py  (writes benchmarks/results/optimize-memory-text-det.json)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine_info

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inferd.bench.compression import report_json  # noqa: E402
from inferd.runtime.devices import cpu_features  # noqa: E402
from tests.zoo import zoo_file  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "optimize-memory-text-det.json"
INFERD = str(ROOT / ".venv" / "bin" / "inferd")
LIMIT_BYTES = 3 << 30
# PP-OCR's preprocessing: ImageNet mean and standard deviation on pixels / 255
SCALE = [f"{1 / (255 * std):.8f}" for std in (0.229, 0.224, 0.225)]
BIAS = [f"{-mean / std:.6f}" for mean, std in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), strict=True)]


def convert(target: Path, size: int) -> None:
    flags = [f for value in SCALE for f in ("--scale", value)] + [f for value in BIAS for f in ("--bias", value)]
    subprocess.run([INFERD, "convert", str(zoo_file("text-det")), "-o", str(target), "--image",
                    "--input-shape", f"1,3,{size},{size}", *flags], check=True, capture_output=True)


def timed(command: list[str]) -> tuple[int, float, int]:
    """(peak RSS in bytes, wall seconds, exit code) of `command` under GNU time. Exit code 2 with a report is a
    package below the floor, refused as it should be: the memory was spent all the same."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    refused = done.returncode == 2 and "below the floor" in done.stderr
    if done.returncode != 0 and not refused:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert peak is not None, done.stderr[-2000:]
    return int(peak.group(1)) * 1024, wall, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=736, help="input height and width")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferd-optimize-memory-") as tmp:
        package, output, report = Path(tmp) / "text-det", Path(tmp) / "int8", Path(tmp) / "report.json"
        convert(package, args.size)
        command = [INFERD, "optimize", str(package), "-o", str(output), "--pipeline", "int8", "--report",
                   "--report-json", str(report)]
        peak, wall, exit_code = timed(command)
        written = json.loads(report.read_text())
    result = {
        "model": f"PP-OCRv4 text detection (zoo 'text-det'), input 1x3x{args.size}x{args.size}",
        "command": f"inferd optimize TEXT-DET-{args.size} -o OUT --pipeline int8 --report --report-json REPORT",
        "max_rss_bytes": peak,
        "max_rss_gib": round(peak / (1 << 30), 3),
        "limit_gib": LIMIT_BYTES / (1 << 30),
        "met": peak <= LIMIT_BYTES,
        "wall_s": round(wall, 1),
        "exit_code": exit_code,
        "int8_usable": written["rows"][-1]["usable"],
        "report": written,
        "cpu_flags": list(cpu_features()),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report_json(result))
    print(f"peak RSS {result['max_rss_gib']} GiB (limit {result['limit_gib']} GiB), {result['wall_s']} s -> {args.out}")


if __name__ == "__main__":
    main()
