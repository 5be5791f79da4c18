"""Is int8 faster than the best non-int8 configuration for a ResNet-50 here? Measured, not assumed.

DESIGN.md records ONNX Runtime's QDQ ResNet-50 running slower than fp32 on a
VNNI machine. This builds a ResNet-50 in plain PyTorch (seeded random weights,
batch norm statistics from real photos so activations have realistic ranges),
converts it with inferd, quantizes it with inferd's static int8 (calibrated on
augmented scikit-image photos) and times every backend × package through
`inferd.runtime.load` in interleaved rounds.

Run: .venv/bin/python benchmarks/resnet50_int8.py  (writes benchmarks/results/resnet50-int8.json)
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inferd.bench.compression import report_json
from inferd.convert import convert_pytorch
from inferd.optimize import augmented_photos, quantize_static
from inferd.runtime import load
from inferd.runtime.devices import cpu_features
from inferd.zoo.efficientnet_lite0 import IMAGE

RESULT = Path(__file__).resolve().parent / "results" / "resnet50-int8.json"
ROUNDS, RUNS_PER_ROUND = 8, 10


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(inputs, out, 1, stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or inputs != out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet50(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                               nn.MaxPool2d(3, 2, 1)]
    inputs = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(inputs, width, stride if i == 0 else 1))
            inputs = width * Bottleneck.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, classes)]
    return nn.Sequential(*layers)


def built(photos: np.ndarray) -> nn.Module:
    """Seeded weights; batch norm statistics measured on real photos so no activation explodes or dies."""
    torch.manual_seed(0)
    model = resnet50()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration pass
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(photos))
    return model.eval()


def timed(models: dict[str, Any], feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """Median latency per configuration, in interleaved rounds so drift on a shared machine hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        for _ in range(5):
            model.predict(feeds)
    for _ in range(ROUNDS):
        for name, model in models.items():
            for _ in range(RUNS_PER_ROUND):
                started = time.perf_counter()
                model.predict(feeds)
                samples[name].append((time.perf_counter() - started) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def main() -> None:
    photos = np.stack(augmented_photos(IMAGE, 32, seed=2))
    model = built(photos)
    with tempfile.TemporaryDirectory(prefix="inferd-resnet50-") as tmp:
        fp32_path, int8_path = Path(tmp) / "fp32", Path(tmp) / "int8"
        fp32 = convert_pytorch(model, inputs=[IMAGE], outputs=["logits"], metadata={"name": "resnet50"},
                               sample_inputs=[{"image": p} for p in photos[:4]]).save(fp32_path)
        quantize_static(fp32, None, samples=64).save(int8_path)
        models = {
            f"{package}-{backend}": load(path, backend=backend)
            for package, path in (("fp32", fp32_path), ("int8", int8_path))
            for backend in ("onnxruntime", "openvino")
        }
        latency = timed(models, {"image": photos[:1]})
    best_float = min((v, k) for k, v in latency.items() if k.startswith("fp32"))
    best_int8 = min((v, k) for k, v in latency.items() if k.startswith("int8"))
    result = {
        "model": "ResNet-50 (plain PyTorch, seeded weights, BN statistics from photos), batch 1",
        "machine": {"cpu": platform.processor() or platform.machine(), "features": sorted(cpu_features())},
        "median_ms": latency,
        "best_non_int8": {"config": best_float[1], "ms": best_float[0]},
        "best_int8": {"config": best_int8[1], "ms": best_int8[0]},
        "int8_vs_best_non_int8": round(best_int8[0] / best_float[0], 3),
        "int8_faster": best_int8[0] < best_float[0],
        "timing": f"{ROUNDS} interleaved rounds x {RUNS_PER_ROUND} runs, median",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(report_json(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
