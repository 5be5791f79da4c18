"""The series the dashboard and alert rules need beyond the request counters: a model that failed to load, each
model's memory and its queue's capacity, reported by a real repository loading real packages."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from onnx import TensorProto, helper

from inferd.manifest import Manifest, Source
from inferd.package import ModelPackage
from inferd.serve.metrics.series import ServerMetrics
from inferd.serve.repository import ModelRepository
from inferd.serve.settings import ServingSettings
from inferd.types import TensorType
from tests.conftest import samples


def _negate_package(directory: Path) -> None:
    """y = -x, dynamic batch: the smallest package that compiles and serves."""
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "negate",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    manifest = Manifest(name="negate", source=Source(framework="onnx"), inputs=[TensorType(name="x", shape=(-1, 4))],
                        outputs=[TensorType(name="y", shape=(-1, 4))])
    ModelPackage(manifest, model=model).save(directory)


def test_a_failed_load_is_reported_until_a_load_succeeds(tmp_path: Path) -> None:
    model = tmp_path / "negate"
    model.mkdir()
    (model / "manifest.json").write_text(json.dumps({"name": "negate"}))
    metrics = ServerMetrics()
    repository = ModelRepository(tmp_path, defaults=ServingSettings(max_queue_size=5), metrics=metrics)
    labels = frozenset({"model": "negate"}.items())

    async def scenario() -> tuple[str, str, str]:
        failures = await repository.load_all()
        first = metrics.render()[0].decode()
        await repository.load_all()
        second = metrics.render()[0].decode()
        shutil.rmtree(model)
        _negate_package(model)
        await repository.load("negate")
        healed = metrics.render()[0].decode()
        await repository.close()
        assert "not a valid manifest" in failures["negate"]
        return first, second, healed

    first, second, healed = asyncio.run(scenario())
    assert samples(first, "inferd_model_load_failed") == {labels: 1}
    assert samples(first, "inferd_model_load_failures_total") == {labels: 1}
    assert samples(second, "inferd_model_load_failures_total") == {labels: 2}
    assert samples(healed, "inferd_model_load_failed") == {}  # loaded now: no longer failing
    assert samples(healed, "inferd_model_load_failures_total") == {labels: 2}  # the history stays
    assert samples(healed, "inferd_queue_capacity") == {labels: 5}
    memory = samples(healed, "inferd_model_memory_bytes")
    assert set(memory) == {frozenset({"model": "negate", "version": "1"}.items())}
    assert memory[frozenset({"model": "negate", "version": "1"}.items())] >= (model / "model.onnx").stat().st_size
