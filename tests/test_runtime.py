"""The runtime on the real default model: backends, cache, batching, async flow control, thread safety."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from inferd.errors import BackendUnavailable, InvalidInput, Overloaded
from inferd.runtime import devices, load
from inferd.runtime.devices import cpu_count


@pytest.fixture(scope="module")
def batch(default_package: Path) -> np.ndarray:
    from PIL import Image
    from skimage import data

    from inferd.io import to_tensor
    from inferd.package import ModelPackage

    spec = ModelPackage.load(default_package).manifest.inputs[0]
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([to_tensor(Image.fromarray(p), spec) for p in photos])  # type: ignore[arg-type]


def test_devices_lists_cpu_for_each_backend() -> None:
    found = devices()
    backends = {d.backend for d in found if d.kind == "cpu"}
    assert {"openvino", "onnxruntime"} <= backends
    cpu = next(d for d in found if d.backend == "openvino" and d.kind == "cpu")
    assert "fp32" in cpu.precisions and cpu.name


def test_cache_makes_second_load_faster(default_package: Path, tmp_path: Path) -> None:
    first = load(default_package, backend="openvino", precision="fp32", cache_dir=tmp_path)
    second = load(default_package, backend="openvino", precision="fp32", cache_dir=tmp_path)
    assert not first.load_info.cached and second.load_info.cached
    assert any((tmp_path / "compiled").rglob("*.blob"))
    ort_first = load(default_package, backend="onnxruntime", cache_dir=tmp_path)
    ort_second = load(default_package, backend="onnxruntime", cache_dir=tmp_path)
    assert not ort_first.load_info.cached and ort_second.load_info.cached


def test_auto_selection_is_measured_and_remembered(default_package: Path, tmp_path: Path) -> None:
    first = load(default_package, cache_dir=tmp_path)
    assert set(first.load_info.selection_ms) == {"openvino:CPU", "onnxruntime:CPUExecutionProvider"}
    winner = min(first.load_info.selection_ms, key=first.load_info.selection_ms.__getitem__)
    assert winner == f"{first.load_info.backend}:{first.load_info.device}"
    again = load(default_package, cache_dir=tmp_path)
    assert (again.load_info.backend, again.load_info.cached) == (first.load_info.backend, True)


def test_backends_agree(default_package: Path, batch: np.ndarray) -> None:
    ov = load(default_package, backend="openvino", precision="fp32").predict({"image": batch})["logits"]
    ort = load(default_package, backend="onnxruntime").predict({"image": batch})["logits"]
    assert np.abs(ov - ort).max() < 1e-3


def test_unavailable_precision_is_explained(default_package: Path) -> None:
    with pytest.raises(BackendUnavailable, match=r"precision|lower"):
        load(default_package, backend="onnxruntime", precision="fp16")
    with pytest.raises(BackendUnavailable, match="not available"):
        load(default_package, backend="tensorrt-nonexistent")
    if sys.platform != "darwin":
        with pytest.raises(BackendUnavailable, match=r"'coreml' is not available here \(Core ML runs on macOS only\)"):
            load(default_package, backend="coreml")


def test_predict_batch_splits_back_exactly(default_package: Path, batch: np.ndarray) -> None:
    model = load(default_package, precision="fp32")
    examples = [{"image": batch[:1]}, {"image": batch[1:3]}, {"image": batch[3]}]
    results = model.predict_batch(examples)
    assert [r["logits"].shape[0] for r in results] == [1, 2, 1]
    singles = [model.predict({"image": batch[i]})["logits"] for i in range(4)]
    np.testing.assert_allclose(np.concatenate([r["logits"] for r in results]), np.concatenate(singles), atol=1e-4)


def test_bad_inputs_are_explained(default_package: Path, batch: np.ndarray) -> None:
    model = load(default_package)
    with pytest.raises(InvalidInput, match="missing"):
        model.predict({"pixels": batch})
    with pytest.raises(InvalidInput, match="axis 2"):
        model.predict({"image": batch[:, :, :100]})
    with pytest.raises(InvalidInput, match="cannot be cast"):
        model.predict({"image": np.full((1, 3, 224, 224), "x")})
    with pytest.raises(InvalidInput, match="empty batch"):
        model.predict({"image": batch[:0]})


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_threads_share_one_model(default_package: Path, batch: np.ndarray, backend: str) -> None:
    """Two streams (two single-threaded sessions on ONNX Runtime) answer each thread with its own image's result."""
    reference = load(default_package, backend=backend, precision="fp32")
    expected = [reference.predict({"image": batch[i]})["logits"] for i in range(4)]
    model = load(default_package, backend=backend, precision="fp32", streams=2)
    errors: list[str] = []

    def worker(index: int) -> None:
        for _ in range(5):
            got = model.predict({"image": batch[index]})["logits"]
            if np.abs(got - expected[index]).max() > 1e-3:
                errors.append(f"thread {index} got another image's result")

    threads = [threading.Thread(target=worker, args=(i % 4,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


async def test_async_bound_rejects_and_recovers(default_package: Path, batch: np.ndarray) -> None:
    model = load(default_package, max_in_flight=2, overflow="reject")
    tasks = [asyncio.create_task(model.predict_async({"image": batch[:1]})) for _ in range(6)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    rejected = [r for r in results if isinstance(r, Overloaded)]
    served = [r for r in results if isinstance(r, dict)]
    assert len(served) == 2 and len(rejected) == 4
    assert model.in_flight == 0
    assert (await model.predict_async({"image": batch[:1]}))["logits"].shape == (1, 1000)


async def test_async_wait_policy_and_cancellation(default_package: Path, batch: np.ndarray) -> None:
    model = load(default_package, max_in_flight=1, overflow="wait")
    tasks = [asyncio.create_task(model.predict_async({"image": batch[:1]})) for _ in range(4)]
    await asyncio.sleep(0)
    tasks[-1].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, dict) for r in results[:3])
    assert isinstance(results[3], asyncio.CancelledError)
    await asyncio.sleep(0.2)
    assert model.in_flight == 0


def test_threads_default_to_cores() -> None:
    assert cpu_count() >= 1
    assert cpu_count() <= (os.cpu_count() or 1)
