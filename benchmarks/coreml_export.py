"""Core ML export of the default EfficientNet-Lite0: weight sizes and export time for each precision and compression.

Run: .venv/bin/python benchmarks/coreml_export.py  (writes benchmarks/results/coreml-export-efficientnet-lite0.json)

Sizes are the bytes of the weight files inside each .mlpackage. Prediction needs
macOS, so accuracy after compression is not measured here.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from inferd.export import to_coreml
from inferd.zoo import efficientnet_lite0

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = [  # (precision, target, compress)
    ("fp32", "macOS13", None),
    ("fp16", "macOS13", None),
    ("fp16", "macOS13", "quantize:8"),
    ("fp16", "macOS13", "palettize:6"),
    ("fp16", "macOS13", "palettize:4"),
    ("fp16", "macOS15", "palettize:4:16"),
    ("fp16", "macOS13", "prune:0.5"),
    ("fp16", "macOS15", "prune:0.5,palettize:4"),
]


def main() -> None:
    package = efficientnet_lite0.prepare(ROOT / "models")
    to_coreml(package, Path(tempfile.mkdtemp()) / "warm.mlpackage")  # imports and first-call costs out of the timings
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as directory:
        for index, (precision, target, compress) in enumerate(VARIANTS):
            started = time.perf_counter()
            result = to_coreml(package, Path(directory) / f"{index}.mlpackage", precision=precision,
                               minimum_deployment_target=target, compress=compress)
            rows.append({
                "precision": precision, "target": target, "compress": compress or "none",
                "weights_bytes": result.weights_bytes, "weights_bytes_uncompressed": result.weights_bytes_uncompressed,
                "package_bytes": result.total_bytes, "export_s": round(time.perf_counter() - started, 1),
                "notes": list(result.notes),
            })
    fp16 = next(r["weights_bytes"] for r in rows if r["precision"] == "fp16" and r["compress"] == "none")
    for row in rows:
        row["smaller_than_fp16"] = round(fp16 / row["weights_bytes"], 2)
    table = Table(title="Core ML export of efficientnet-lite0")
    for column in ("precision", "target", "compress", "weights MB", "vs fp16", "export s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["precision"], r["target"], r["compress"], f"{r['weights_bytes'] / 1e6:.2f}",
                      f"{r['smaller_than_fp16']:.2f}x", f"{r['export_s']:.1f}")
    Console().print(table)
    out = ROOT / "benchmarks" / "results" / "coreml-export-efficientnet-lite0.json"
    out.write_text(json.dumps({"machine": {"cpu": platform.processor() or platform.machine()}, "variants": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
