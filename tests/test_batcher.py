"""The dynamic batcher on real models: merging, limits, deadlines, cancellation and shutdown."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.errors import DeadlineExceeded, InvalidInput, NotReady, Overloaded
from inferd.manifest import Manifest, Source
from inferd.package import ModelPackage
from inferd.runtime import CompiledModel, load
from inferd.serve.batching.scheduler import ClientDisconnected, DynamicBatcher
from inferd.serve.phases import Phases
from inferd.serve.settings import ServingSettings as BatchingConfig
from inferd.types import TensorType

WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3)


@dataclass
class Recorder:
    """A BatchObserver that keeps what it saw, so tests can tell which work really ran."""

    batches: list[tuple[int, int]] = field(default_factory=list)
    queue_s: list[float] = field(default_factory=list)

    def on_batch(self, rows: int, requests: int, phases: Phases) -> None:
        assert phases.infer_s > 0
        self.batches.append((rows, requests))

    def on_dequeued(self, queue_s: float) -> None:
        self.queue_s.append(queue_s)


Make = Callable[..., tuple[DynamicBatcher, Recorder]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Builds batchers on the test's loop and closes them afterwards, so no dispatcher outlives its test."""
    made: list[DynamicBatcher] = []

    def build(model: CompiledModel, **config: Any) -> tuple[DynamicBatcher, Recorder]:
        recorder = Recorder()
        made.append(DynamicBatcher(model, BatchingConfig(**config), recorder))
        return made[-1], recorder

    yield build
    for batcher in made:
        await batcher.close(drain=False)


@pytest.fixture(scope="module")
def model(default_package: Path) -> CompiledModel:
    return load(default_package, backend="onnxruntime")


@pytest.fixture(scope="module")
def photos(model: CompiledModel) -> np.ndarray:
    from PIL import Image
    from skimage import data

    from inferd.io import to_tensor

    spec = model.manifest.inputs[0]
    pictures = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([to_tensor(Image.fromarray(p), spec) for p in pictures])  # type: ignore[arg-type]


def _package(tmp: Path, name: str, node: Any, x_dims: list[Any], y_dims: list[Any], initializers: list[Any]) -> CompiledModel:
    graph = helper.make_graph(
        [node], name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_dims)],
        initializers,
    )
    # IR 10 rather than the newest onnx's default: the installed ONNX Runtime may not read newer files yet.
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    manifest = Manifest(
        name=name, source=Source(framework="onnx"),
        inputs=[TensorType(name="x", shape=_manifest_shape(x_dims))],
        outputs=[TensorType(name="y", shape=_manifest_shape(y_dims))],
    )
    ModelPackage(manifest, model=onnx_model).save(tmp / name)
    return load(tmp / name, backend="onnxruntime", cache_dir=tmp / "cache")


def _manifest_shape(dims: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in dims)


@pytest.fixture(scope="module")
def static_model(tmp_path_factory: pytest.TempPathFactory) -> CompiledModel:
    """y = x @ W with the batch fixed at 1, as exported by tools that bake the batch in."""
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    return _package(tmp_path_factory.mktemp("static"), "static", node, [1, 4], [1, 3], [numpy_helper.from_array(WEIGHT, "W")])


@pytest.fixture(scope="module")
def any_width_model(tmp_path_factory: pytest.TempPathFactory) -> CompiledModel:
    """y = -x with a dynamic batch and a dynamic width, so requests of different widths cannot be stacked."""
    node = helper.make_node("Neg", ["x"], ["y"])
    return _package(tmp_path_factory.mktemp("neg"), "neg", node, ["batch", "width"], ["batch", "width"], [])


@pytest.fixture
def slow_model(any_width_model: CompiledModel, monkeypatch: pytest.MonkeyPatch) -> CompiledModel:
    """The width model taking 100 ms a run, long enough for a test to act while the engine is busy."""
    infer = any_width_model.engine.infer

    def slow_infer(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.1)
        return infer(feeds)

    monkeypatch.setattr(any_width_model.engine, "infer", slow_infer)
    return any_width_model


def random_images(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (rows, 3, 224, 224)).astype(np.float32)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never became true")


async def test_concurrent_requests_merge_and_split_back_in_order(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_batch_size=8, max_queue_delay_ms=100)
    requests = [photos[:1], photos[1:3], np.concatenate([photos[3:], random_images(2, seed=0)])]
    results = await asyncio.gather(*(batcher.submit({"image": r}) for r in requests))
    assert seen.batches == [(6, 3)]
    for request, result in zip(requests, results, strict=True):
        expected = model.predict({"image": request})["logits"]
        assert result["logits"].shape == (len(request), 1000)
        np.testing.assert_allclose(result["logits"], expected, atol=1e-3)
    assert batcher.queue_depth == 0 and batcher.rows_in_flight == 0


async def test_max_batch_size_counts_rows_and_oversized_requests_run_alone(model: CompiledModel, make: Make) -> None:
    batcher, seen = make(model, max_batch_size=4, max_queue_delay_ms=50)
    requests = [random_images(rows, seed) for seed, rows in enumerate([1, 2, 1, 2, 1, 6])]
    results = await asyncio.gather(*(batcher.submit({"image": r}) for r in requests))
    assert all(rows <= 4 for rows, count in seen.batches if count > 1)
    assert (6, 1) in seen.batches
    assert sum(rows for rows, _ in seen.batches) == 13 and sum(count for _, count in seen.batches) == 6
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result["logits"], model.predict({"image": request})["logits"], atol=1e-3)


async def test_preferred_size_dispatches_before_the_delay(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=500, preferred_batch_sizes=(2,))
    started = time.monotonic()
    await asyncio.gather(batcher.submit({"image": photos[:1]}), batcher.submit({"image": photos[1:2]}))
    assert time.monotonic() - started < 0.3
    assert seen.batches == [(2, 2)]


async def test_lone_request_waits_for_company_unless_delay_is_zero(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    patient, _ = make(model, max_queue_delay_ms=200)
    started = time.monotonic()
    await patient.submit({"image": photos[:1]})
    assert time.monotonic() - started >= 0.2
    eager, _ = make(model, max_queue_delay_ms=0)
    started = time.monotonic()
    await eager.submit({"image": photos[:1]})
    assert time.monotonic() - started < 0.15


async def test_requests_arriving_while_the_engine_is_busy_join_the_next_batch(slow_model: CompiledModel, make: Make) -> None:
    batcher, seen = make(slow_model, max_queue_delay_ms=0, executions=1)
    first = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await until(lambda: batcher.rows_in_flight == 1)
    later = [batcher.submit({"x": np.full((1, 3), i, np.float32)}) for i in range(3)]
    results = await asyncio.gather(first, *later)
    assert seen.batches == [(1, 1), (3, 3)]
    assert [float(r["y"][0, 0]) for r in results] == [-1.0, 0.0, -1.0, -2.0]


async def test_a_full_batch_waits_at_the_busy_engine_not_in_the_queue(slow_model: CompiledModel, make: Make) -> None:
    batcher, seen = make(slow_model, max_batch_size=2, max_queue_delay_ms=0, executions=1)
    first = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await until(lambda: batcher.rows_in_flight == 1)
    full = [asyncio.create_task(batcher.submit({"x": np.full((1, 3), i, np.float32)})) for i in (2, 3)]
    await until(lambda: batcher.rows_in_flight == 3)
    partial = asyncio.create_task(batcher.submit({"x": np.full((1, 3), 4, np.float32)}))
    await until(lambda: batcher.queue_depth == 3)
    assert batcher.rows_in_flight == 3  # a batch that could still grow stays in the queue
    time.sleep(0.25)  # the event loop is busy elsewhere: the worker goes on to the full batch by itself
    results = await asyncio.gather(first, *full, partial)
    assert [float(r["y"][0, 0]) for r in results] == [-1.0, -2.0, -3.0, -4.0]
    assert seen.batches == [(1, 1), (2, 2), (1, 1)]
    assert seen.queue_s[1] < 0.2 and seen.queue_s[3] >= 0.25  # the full batch started when the engine was free


async def test_only_requests_with_the_same_item_shapes_merge(any_width_model: CompiledModel, make: Make) -> None:
    batcher, seen = make(any_width_model, max_queue_delay_ms=50)
    requests = [np.full((1, 3), 1, np.float32), np.full((1, 5), 2, np.float32), np.full((2, 3), 3, np.float32)]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))
    assert sorted(seen.batches) == [(1, 1), (3, 2)]
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], -request)


async def test_model_with_fixed_batch_never_merges(static_model: CompiledModel, make: Make) -> None:
    assert not static_model.manifest.batch_dynamic
    batcher, seen = make(static_model, max_queue_delay_ms=50)
    requests = [np.full((1, 4), i, np.float32) for i in range(4)]
    results = await asyncio.gather(*(batcher.submit({"x": r}) for r in requests))
    assert seen.batches == [(1, 1)] * 4
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result["y"], request @ WEIGHT)


async def test_full_queue_raises_overloaded_with_a_retry_estimate(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_size=2, max_queue_delay_ms=10_000)
    waiting = [asyncio.create_task(batcher.submit({"image": photos[:1]})) for _ in range(2)]
    await until(lambda: batcher.queue_depth == 2)
    with pytest.raises(Overloaded, match="max_queue_size 2") as raised:
        await batcher.submit({"image": photos[:1]})
    assert raised.value.status_code == 429 and raised.value.retry_after_s >= 1
    await batcher.close(drain=False)
    for task in waiting:
        with pytest.raises(NotReady):
            await task
    assert seen.batches == []


async def test_expired_request_is_dropped_and_never_runs(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=300)
    hurried = batcher.submit({"image": photos[:1]}, deadline=time.monotonic() + 0.05)
    patient = batcher.submit({"image": photos[1:2]})
    outcomes = await asyncio.gather(hurried, patient, return_exceptions=True)
    assert isinstance(outcomes[0], DeadlineExceeded) and outcomes[0].status_code == 504
    assert re.fullmatch(r".*waited \d+\.\d ms in the queue; the deadline was (49|50)\.\d ms after it arrived", str(outcomes[0]))
    assert seen.batches == [(1, 1)]
    with pytest.raises(DeadlineExceeded, match="reached the queue after its deadline; give it a longer timeout"):
        await batcher.submit({"image": photos[:1]}, deadline=time.monotonic() - 1)
    assert seen.batches == [(1, 1)] and batcher.queue_depth == 0


async def test_request_expiring_behind_a_busy_engine_never_runs(slow_model: CompiledModel, make: Make) -> None:
    batcher, seen = make(slow_model, max_queue_delay_ms=0, executions=1)
    running = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await until(lambda: batcher.rows_in_flight == 1)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit({"x": np.ones((1, 3), np.float32)}, deadline=time.monotonic() + 0.03)
    await running
    await batcher.close(drain=True)
    assert seen.batches == [(1, 1)]


async def test_request_handed_to_a_busy_engine_keeps_its_deadline(slow_model: CompiledModel, make: Make) -> None:
    batcher, seen = make(slow_model, max_batch_size=1, executions=1)
    running = asyncio.create_task(batcher.submit({"x": np.ones((1, 3), np.float32)}))
    await until(lambda: batcher.rows_in_flight == 1)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"waited \d+\.\d ms in the queue"):
        await batcher.submit({"x": np.ones((1, 3), np.float32)}, deadline=time.monotonic() + 0.03)
    assert time.monotonic() - started < 0.09  # answered at its deadline, not when the engine came free
    await running
    await batcher.close(drain=True)
    assert seen.batches == [(1, 1)]


async def test_cancelled_waiter_leaves_the_queue(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=10_000)
    task = asyncio.create_task(batcher.submit({"image": photos[:1]}))
    await until(lambda: batcher.queue_depth == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queue_depth == 0
    await batcher.close(drain=True)
    assert seen.batches == []


async def test_misaligned_views_of_a_body_are_served(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    """The V2 codec hands out unaligned views of request bodies; alone or merged, they must give the right answer."""
    batcher, seen = make(model, max_queue_delay_ms=50)
    bodies = [b"\0" + photos[i : i + 1].astype("<f4").tobytes() for i in range(2)]
    views = [np.frombuffer(body, dtype="<f4", offset=1).reshape(photos[:1].shape) for body in bodies]
    assert not any(view.flags.aligned for view in views)
    alone = await batcher.submit({"image": views[0]})
    merged = await asyncio.gather(*(batcher.submit({"image": view}) for view in views))
    expected = model.predict({"image": photos[:2]})["logits"]
    np.testing.assert_allclose(alone["logits"], expected[:1], atol=1e-3)
    np.testing.assert_allclose(np.concatenate([m["logits"] for m in merged]), expected, atol=1e-3)
    assert seen.batches == [(1, 1), (2, 2)]


async def test_disconnected_client_is_dropped(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=10_000)

    async def disconnected() -> None:  # the client leaves 0.1 s in
        await asyncio.sleep(0.1)

    started = time.monotonic()
    with pytest.raises(ClientDisconnected) as raised:
        await batcher.submit({"image": photos[:1]}, disconnected=disconnected)
    assert raised.value.status_code == 499
    assert time.monotonic() - started < 1
    assert batcher.queue_depth == 0 and seen.batches == []


async def test_a_client_that_stays_is_answered(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=200)

    async def never() -> None:
        await asyncio.Event().wait()

    outputs = await batcher.submit({"image": photos[:1]}, disconnected=never)
    np.testing.assert_allclose(outputs["logits"], model.predict({"image": photos[:1]})["logits"], atol=1e-3)
    assert seen.batches == [(1, 1)]


async def test_close_drains_queued_work_then_refuses(model: CompiledModel, photos: np.ndarray, make: Make) -> None:
    batcher, seen = make(model, max_queue_delay_ms=10_000)
    waiting = [asyncio.create_task(batcher.submit({"image": photos[i : i + 1]})) for i in range(2)]
    await until(lambda: batcher.queue_depth == 2)
    started = time.monotonic()
    await batcher.close(drain=True)
    assert time.monotonic() - started < 2
    assert seen.batches == [(2, 2)]
    for i, task in enumerate(waiting):
        np.testing.assert_allclose(task.result()["logits"], model.predict({"image": photos[i : i + 1]})["logits"], atol=1e-3)
    with pytest.raises(NotReady):
        await batcher.submit({"image": photos[:1]})


async def test_engine_failure_reaches_every_request_in_the_batch(
    any_width_model: CompiledModel, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("device lost")

    monkeypatch.setattr(any_width_model.engine, "infer", broken)
    batcher, seen = make(any_width_model, max_queue_delay_ms=50)
    outcomes = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 2), np.float32)}) for _ in range(2)), return_exceptions=True
    )
    assert all(isinstance(o, RuntimeError) and str(o) == "device lost" for o in outcomes)
    assert seen.batches == [] and batcher.rows_in_flight == 0


async def test_invalid_input_is_refused_before_queueing(model: CompiledModel, make: Make) -> None:
    batcher, _ = make(model)
    with pytest.raises(InvalidInput, match="224"):
        await batcher.submit({"image": np.zeros((1, 3, 100, 100), np.float32)})
    assert batcher.queue_depth == 0


def test_config_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        BatchingConfig(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="at least 1"):
        BatchingConfig(executions=0)
