"""What inferd.load accepts, how it tells formats apart, and the conversion cache that makes the second load free."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import inferd
from inferd.convert import ConvertOptions, SourceKind, detect_source
from inferd.errors import ConversionError, InferdError, PackageError
from inferd.runtime.sources import resolve_source
from tests.convert_models import LABELS, held_out, train_torch_mlp

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter's retirement notice


@pytest.fixture(scope="module")
def mlp() -> Any:
    return train_torch_mlp()


def export_mlp(mlp: Any) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(mlp, (torch.zeros(1, 64),), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                      opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def test_second_load_comes_from_the_cache_until_the_source_or_options_change(mlp: Any, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(export_mlp(mlp), path)
    cache = tmp_path / "cache"
    options = ConvertOptions(labels=tuple(LABELS))
    loads = [inferd.load(path, convert_options=options, cache_dir=cache, precision="fp32") for _ in range(2)]
    assert [m.load_info.conversion_cached for m in loads] == [False, True]
    assert loads[0].package.path == loads[1].package.path
    assert loads[1].manifest.classifier is not None and loads[1].manifest.classifier.labels == LABELS
    rows = held_out(8)[0].reshape(8, 64)
    with torch.inference_mode():
        assert np.abs(loads[1].predict({"x": rows})["logits"] - mlp(torch.from_numpy(rows)).numpy()).max() <= 1e-4

    other_options = resolve_source(path, options=ConvertOptions(), cache_dir=cache)
    assert other_options.conversion_cached is False and other_options.package.path != loads[0].package.path

    edited = onnx.load(path)
    edited.producer_name = "someone else"
    onnx.save(edited, path)
    assert resolve_source(path, options=options, cache_dir=cache).conversion_cached is False
    assert resolve_source(path, options=options, cache_dir=cache).conversion_cached is True


def test_external_weights_are_part_of_the_cache_key(mlp: Any, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(export_mlp(mlp), path, save_as_external_data=True, location="mlp.weights", size_threshold=0)
    cache = tmp_path / "cache"
    assert resolve_source(path, cache_dir=cache).conversion_cached is False
    assert resolve_source(path, cache_dir=cache).conversion_cached is True
    weights = (tmp_path / "mlp.weights").read_bytes()
    (tmp_path / "mlp.weights").write_bytes(weights[:-4] + np.float32(0.5).tobytes())
    changed = resolve_source(path, cache_dir=cache)
    assert changed.conversion_cached is False


def test_a_damaged_cache_entry_is_converted_again(mlp: Any, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(export_mlp(mlp), path)
    first = resolve_source(path, cache_dir=tmp_path / "cache")
    assert first.package.path is not None
    (first.package.path / "model.onnx").write_bytes(b"truncated")
    again = resolve_source(path, cache_dir=tmp_path / "cache")
    assert again.conversion_cached is False
    assert again.package.path is not None and (again.package.path / "model.onnx").stat().st_size > 1000


def test_package_directories_load_as_they_are(mlp: Any, tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(export_mlp(mlp), path)
    package = inferd.convert(path).save(tmp_path / "pkg")
    assert detect_source(tmp_path / "pkg") is SourceKind.PACKAGE
    resolved = resolve_source(tmp_path / "pkg", cache_dir=tmp_path / "cache")
    assert resolved.conversion_cached is None and resolved.package.path == package.path
    assert not (tmp_path / "cache").exists()


def test_detection_confirms_suffixes_with_content(tmp_path: Path) -> None:
    saved_model = tmp_path / "exported"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    assert detect_source(saved_model) is SourceKind.SAVED_MODEL
    keras_file = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
    assert detect_source(keras_file) is SourceKind.KERAS
    (tmp_path / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert detect_source(tmp_path / "model.h5") is SourceKind.KERAS
    (tmp_path / "model.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    assert detect_source(tmp_path / "model.tflite") is SourceKind.TFLITE
    (tmp_path / "model.joblib").write_bytes(b"\x80\x04")
    assert detect_source(tmp_path / "model.joblib") is SourceKind.SKLEARN_PICKLE

    for name, message in (("fake.tflite", "not a TFLite flatbuffer"), ("fake.h5", "not an HDF5 file"),
                          ("fake.keras", "not a Keras archive"), ("fake.pt", "not a TorchScript archive")):
        (tmp_path / name).write_text("hello")
        with pytest.raises(ConversionError, match=message):
            detect_source(tmp_path / name)


def test_unknown_and_unavailable_formats_say_what_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "model.caffemodel").write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match=r"does not know the \.caffemodel format; it loads a model package.*\.onnx"):
        inferd.load(tmp_path / "model.caffemodel")
    (tmp_path / "Classifier.mlpackage").mkdir()
    for coreml in (tmp_path / "Classifier.mlpackage", tmp_path / "Classifier.mlmodel"):
        with pytest.raises(ConversionError, match=r"Core ML runs only on macOS.*inferd export coreml"):
            inferd.load(coreml)
    (tmp_path / "folder").mkdir()
    with pytest.raises(PackageError, match=r"manifest\.json is missing.*nor a TensorFlow SavedModel"):
        inferd.load(tmp_path / "folder")
    with pytest.raises(PackageError, match="does not exist"):
        inferd.load(tmp_path / "nowhere.onnx")
    with pytest.raises(ValueError, match="needs positive sizes"):
        ConvertOptions(input_shape=(0, 3))
    with pytest.raises(InferdError, match="already a model package"):
        inferd.convert(inferd.convert(onnx.load(_relu(tmp_path))).save(tmp_path / "pkg").path)


def _relu(tmp_path: Path) -> Path:
    node = onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "relu.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    return path
