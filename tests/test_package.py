"""ModelPackage: save, load, validate, and errors that name the damaged file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.errors import PackageError
from inferd.manifest import Manifest, Source
from inferd.package import MANIFEST_FILE, MODEL_FILE, ModelPackage
from inferd.types import ImageType, TensorType


def tiny_package(name: str = "tiny") -> ModelPackage:
    """y = x @ W for a fixed W: a real ONNX model small enough to build in a test."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = Manifest(
        name=name, source=Source(framework="onnx"),
        inputs=[TensorType(name="x", shape=(-1, 4))], outputs=[TensorType(name="y", shape=(-1, 3))],
    )
    return ModelPackage(manifest, model=model)


def test_save_load_round_trip(tmp_path: Path) -> None:
    saved = tiny_package().save(tmp_path / "tiny")
    loaded = ModelPackage.load(tmp_path / "tiny")
    loaded.validate()
    assert set(loaded.manifest.files) == {MODEL_FILE}
    assert loaded.manifest.inputs[0].shape == (-1, 4)
    assert loaded.content_hash == saved.content_hash
    assert onnx.load(str(loaded.model_path)).graph.node[0].op_type == "MatMul"


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    tiny_package().save(tmp_path / "tiny")
    with pytest.raises(PackageError, match="already exists"):
        tiny_package().save(tmp_path / "tiny")
    tiny_package().save(tmp_path / "tiny", overwrite=True)


@pytest.mark.parametrize("damage", ["truncate", "tamper", "delete"])
def test_damaged_model_file_is_named(tmp_path: Path, damage: str) -> None:
    directory = tiny_package().save(tmp_path / "tiny").path
    assert directory is not None
    model_file = directory / MODEL_FILE
    data = model_file.read_bytes()
    if damage == "truncate":
        model_file.write_bytes(data[: len(data) // 2])
    elif damage == "tamper":
        model_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        model_file.unlink()
    with pytest.raises(PackageError, match=r"model\.onnx"):
        ModelPackage.load(directory)


def test_missing_or_invalid_manifest(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package directory"):
        ModelPackage.load(tmp_path / "nothing")
    directory = tiny_package().save(tmp_path / "tiny").path
    assert directory is not None
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["inputs"][0]["shape"] = [0, 4]
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PackageError, match="not a valid manifest"):
        ModelPackage.load(directory)
    (directory / MANIFEST_FILE).unlink()
    with pytest.raises(PackageError, match=r"manifest\.json is missing"):
        ModelPackage.load(directory)


def test_validate_catches_manifest_graph_mismatch(tmp_path: Path) -> None:
    package = tiny_package()
    package.manifest = package.manifest.model_copy(update={"inputs": [TensorType(name="z", shape=(-1, 4))]})
    with pytest.raises(PackageError, match="do not match the ONNX graph"):
        package.save(tmp_path / "tiny").validate()


def test_image_type_checks_channels() -> None:
    with pytest.raises(ValueError, match="needs 3 channels"):
        ImageType(name="image", shape=(1, 1, 224, 224))
    gray = ImageType(name="image", shape=(1, 224, 224, 1), color_layout="GRAY", channel_layout="NHWC")
    assert (gray.height, gray.width, gray.channels) == (224, 224, 1)


def test_copied_package_still_verifies(tmp_path: Path) -> None:
    tiny_package().save(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ModelPackage.load(tmp_path / "b").validate()
