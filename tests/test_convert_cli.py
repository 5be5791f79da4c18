"""`inferd convert`, and the other commands taking model files directly, run as a user runs them."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from inferd.package import ModelPackage
from tests.convert_models import LABELS, as_pixels, held_out, train_torch_cnn

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter's retirement notice


def inferd(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "INFERD_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=600,
                          env=environment)


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    model = train_torch_cnn()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), buffer, dynamo=False, input_names=["x"],
                      output_names=["logits"], opset_version=13)
    path = tmp_path_factory.mktemp("cli") / "digits.onnx"
    path.write_bytes(buffer.getvalue())
    return path, model


def test_convert_onnx_with_preprocessing_labels_and_metadata(digits_onnx: tuple[Path, Any], tmp_path: Path) -> None:
    source, model = digits_onnx
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    output = tmp_path / "digits-pkg"
    result = inferd("convert", str(source), "-o", str(output), "--image", "--scale", str(1 / 255),
                    "--color-layout", "GRAY", "--resize", "stretch", "--labels", str(labels), "--name", "digits",
                    "--author", "inferd tests", "--license", "MIT", "--description", "8x8 digits", "--version", "3",
                    cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "fidelity: max abs diff" in result.stdout and "(pass)" in result.stdout
    manifest = ModelPackage.load(output).manifest
    assert (manifest.name, manifest.version, manifest.author, manifest.license, manifest.description) == (
        "digits", "3", "inferd tests", "MIT", "8x8 digits")
    assert manifest.classifier is not None and manifest.classifier.labels == LABELS
    assert manifest.inputs[0].kind == "image" and manifest.inputs[0].shape == (-1, 1, 8, 8)
    assert manifest.fidelity is not None and manifest.fidelity.passed

    images, _ = held_out(3)
    files = []
    for i, image in enumerate(images):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(as_pixels(image)).save(files[-1])
    result = inferd("predict", str(output), *map(str, files), "--json", "-k", "1", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    predicted = [json.loads(line)["predictions"][0]["label"] for line in result.stdout.splitlines() if line.strip()]
    with torch.inference_mode():
        expected = model(torch.from_numpy(np.rint(images * 255)[:, None].astype(np.float32) / 255)).argmax(1)
    assert predicted == [LABELS[i] for i in expected.tolist()]

    again = inferd("convert", str(source), "-o", str(output), cache=tmp_path / "cache")
    assert again.returncode == 2 and "--force" in again.stderr


def test_other_commands_take_model_files(digits_onnx: tuple[Path, Any], tmp_path: Path) -> None:
    source, _ = digits_onnx
    info = inferd("info", str(source), "--json", cache=tmp_path / "cache")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["source"]["framework"].startswith("onnx")
    compiled = inferd("compile", str(source), "--precision", "fp32", cache=tmp_path / "cache")
    assert compiled.returncode == 0, compiled.stderr
    assert "second" in compiled.stdout
    assert len(list((tmp_path / "cache" / "converted").glob("*/manifest.json"))) == 1  # converted once for both
    image = tmp_path / "digit.png"
    Image.fromarray(as_pixels(held_out(1)[0][0])).save(image)
    predict = inferd("predict", str(source), str(image), cache=tmp_path / "cache")
    assert predict.returncode == 2
    assert "does not take a single image" in predict.stderr and "inferd convert" in predict.stderr


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (tmp_path / "model.caffemodel").write_bytes(b"\x00" * 16)
    node = onnx.helper.make_node("FancyNorm", ["x"], ["y"], name="block3/fancy_norm", domain="com.example")
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                           onnx.helper.make_opsetid("com.example", 1)]),
              tmp_path / "custom.onnx")
    for source, extra, message in (
        ("model.caffemodel", [], "does not know the .caffemodel format"),
        ("custom.onnx", [], "com.example.FancyNorm (node 'block3/fancy_norm')"),
        ("custom.onnx", ["--scale", "2"], "--scale describes an image input: add --image"),
        ("custom.onnx", ["--input-shape", "1,x"], "cannot read the shape"),
    ):
        result = inferd("convert", str(tmp_path / source), "-o", str(tmp_path / "out"), *extra, cache=cache)
        assert result.returncode == 2, (source, result.stdout)
        assert message in result.stderr.replace("\n", " ") and "Traceback" not in result.stderr, result.stderr


def test_convert_tflite_keeps_nhwc(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="photo")
    outputs = keras.layers.Dense(2, name="scores")(keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    source = tmp_path / "tiny.tflite"
    source.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inputs, outputs)).convert())
    result = inferd("convert", str(source), "-o", str(tmp_path / "pkg"), "--image", "--scale", "0.0078125",
                    "--bias", "-1", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "NHWC" in result.stdout and "LiteRT" in result.stdout
    spec = ModelPackage.load(tmp_path / "pkg").manifest.inputs[0]
    assert spec.kind == "image" and spec.shape[1:] == (8, 8, 3)
