"""TensorFlow sources (SavedModel, .keras, .h5, .tflite) of one trained NHWC digit classifier, converted and served.

Each package must match its source on held-out digits, declare its image input
NHWC, and turn a real picture into the tensor layout the Keras model was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import inferd
from inferd.convert import ConvertOptions, ImagePreprocessing, convert_tensorflow
from inferd.errors import ConversionError
from inferd.io import preprocess_image
from inferd.types import ImageType
from tests.convert_models import LABELS, as_pixels, held_out, train_keras_cnn

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
# Keras calls np.array on tensors without the copy keyword NumPy 2 asks for
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DIGIT = ImagePreprocessing(scale=1 / 255, color_layout="GRAY", resize="stretch")


@pytest.fixture(scope="module")
def keras_model() -> Any:
    return train_keras_cnn()


@pytest.fixture(scope="module")
def sources(keras_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same trained model in every TensorFlow file format."""
    directory = tmp_path_factory.mktemp("tf")
    paths = {"keras": directory / "digits.keras", "h5": directory / "digits.h5",
             "saved_model": directory / "digits_saved_model", "tflite": directory / "digits.tflite"}
    keras_model.save(paths["keras"])
    keras_model.save(paths["h5"])
    keras_model.export(paths["saved_model"], verbose=False)
    paths["tflite"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras_model).convert())
    return paths


def samples(count: int = 32) -> list[dict[str, np.ndarray]]:
    images, _ = held_out(count)
    return [{"image": image[:, :, None]} for image in images]


@pytest.mark.parametrize("kind", ["keras", "h5", "saved_model", "tflite"])
def test_tensorflow_source_converts_with_fidelity(kind: str, sources: dict[str, Path], keras_model: Any,
                                                  tmp_path: Path) -> None:
    package = convert_tensorflow(sources[kind], image=DIGIT, classifier_labels=LABELS, sample_inputs=samples())
    manifest = package.manifest
    fidelity = manifest.fidelity
    assert fidelity is not None and fidelity.passed and fidelity.samples == 32
    assert fidelity.max_abs_diff <= 1e-4 and fidelity.top1_agreement == 1.0
    expected_reference = {"keras": "keras", "h5": "keras", "saved_model": "tensorflow", "tflite": "LiteRT"}[kind]
    assert fidelity.reference.startswith(expected_reference)
    assert manifest.source.framework.startswith({"saved_model": "tensorflow SavedModel", "tflite": "tflite"}
                                                .get(kind, "keras"))
    spec = manifest.inputs[0]
    assert isinstance(spec, ImageType) and spec.name == "image"
    assert (spec.shape, spec.channel_layout) == ((-1, 8, 8, 1), "NHWC")
    assert manifest.classifier is not None
    assert manifest.classifier.activation == "none"  # the Keras head already ends in a softmax

    saved = package.save(tmp_path / kind)
    assert saved.path is not None
    model = inferd.load(saved.path, precision="fp32")
    images, labels = held_out(64)
    pictures = np.stack([preprocess_image(Image.fromarray(as_pixels(image)), spec) for image in images])
    assert pictures.shape == (64, 8, 8, 1)
    assert np.abs(pictures[..., 0] - images).max() <= 0.51 / 255  # NHWC, as Keras was trained
    probabilities = model.predict({"image": pictures})[manifest.classifier.output]
    assert np.abs(probabilities - keras_model(pictures, training=False).numpy()).max() <= 1e-4
    assert np.mean(probabilities.argmax(1) == labels) >= 0.8


def test_tflite_and_keras_files_load_directly_and_convert_once(sources: dict[str, Path], tmp_path: Path) -> None:
    options = ConvertOptions(image=DIGIT, labels=tuple(LABELS))
    for kind in ("tflite", "keras"):
        first = inferd.load(sources[kind], convert_options=options, precision="fp32", cache_dir=tmp_path)
        second = inferd.load(sources[kind], convert_options=options, precision="fp32", cache_dir=tmp_path)
        assert (first.load_info.conversion_cached, second.load_info.conversion_cached) == (False, True)
        assert first.package.path == second.package.path and tmp_path in first.package.path.parents
        images, _ = held_out(4)
        assert second.manifest.classifier is not None
        scores = second.predict({"image": images[:, :, :, None]})[second.manifest.classifier.output]
        assert scores.shape == (4, 10)


def test_savedmodel_with_an_op_tf2onnx_cannot_convert(tmp_path: Path) -> None:
    """lgamma has no ONNX counterpart: the error names the TensorFlow op and its node, and says what to try."""

    class LogGammaFeatures(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = tf.Variable(tf.ones((4, 2)))

        @tf.function(input_signature=[tf.TensorSpec((None, 4), tf.float32, name="features")])
        def __call__(self, features: Any) -> Any:
            return {"scores": tf.matmul(tf.math.lgamma(features + 2.0, name="log_gamma"), self.weights)}

    module = LogGammaFeatures()
    tf.saved_model.save(module, str(tmp_path / "lgamma"), signatures={"serving_default": module.__call__})
    with pytest.raises(ConversionError, match=r"Lgamma \(node '[^']*log_gamma[^']*'\).*newer opset.*rewrite"):
        convert_tensorflow(tmp_path / "lgamma")


def test_savedmodel_signature_and_shape_errors(sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"no signature 'predict'.*serving_default"):
        convert_tensorflow(sources["saved_model"], signature="predict")
    import keras

    inputs = keras.Input((None, None, 3), name="photo")
    open_size = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs)))
    path = tmp_path / "open.keras"
    open_size.save(path)
    with pytest.raises(ConversionError, match=r"dynamic height or width.*--input-shape"):
        convert_tensorflow(path, image=ImagePreprocessing())
    package = convert_tensorflow(path, image=ImagePreprocessing(scale=1 / 255), input_shape=(1, 32, 32, 3))
    assert package.manifest.inputs[0].shape == (-1, 32, 32, 3)
    assert package.manifest.fidelity is not None and package.manifest.fidelity.max_abs_diff <= 1e-4
