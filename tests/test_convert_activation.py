"""Issue 16, findings 7 and 8: a classifier's probabilities come back as its source computes them, under the name
the model is served by.

A model that already ends in a softmax (or a sigmoid) must not get a second one
when inferd ranks its labels; the graph says so through the ops that only move
or round values (Identity, Reshape, Q/DQ...), and the outputs on the conversion
samples say so where the graph hides it. `--activation` overrides both. Hints
in server errors name the URL a client can call: the repository's directory
name, which is also the name `inferd convert -o DIR` gives a package.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

import inferd
from inferd.cli import app
from inferd.errors import InferdError
from inferd.io import preprocess_image, top_k
from inferd.io.classify import softmax
from inferd.package import ModelPackage
from inferd.types import ImageType
from tests.conftest import LiveServer, encode
from tests.convert_models import LABELS, held_out, train_torch_cnn
from tests.zoo import zoo_file

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EMOTIONS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
HALF = ["--scale", repr(1 / 127.5), "--bias", "-1.0", "--resize", "stretch"]  # both projects' pixel / 127.5 - 1
# mini-Xception (fer): 64x64 grayscale; PP-OCR's direction classifier: 48x192 BGR text lines.
FER = ["--image", "--color-layout", "GRAY", *HALF]
PPOCR_CLS = ["--image", "--input-shape", "1,3,48,192", "--color-layout", "BGR", *HALF]


def run_inferd(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"inferd {' '.join(args)}: {result.output}\n{result.exception!r}"


def face() -> bytes:
    """The astronaut's smiling face: the emotion model is sure of it (happy), so a second softmax shows."""
    return encode(data.astronaut()[30:190, 170:320])


def text_line() -> bytes:
    """A line of skimage's page photo the right way up: the direction classifier is sure of it ('0')."""
    return encode(np.stack([data.page()[12:36, :384]] * 3, axis=-1))


def _calibration_faces() -> list[np.ndarray]:
    """Quarters and centres of skimage's photos, as the emotion model takes them (64x64 grey, -1..1)."""
    rows = []
    for photo in (data.astronaut(), data.chelsea(), data.coffee(), data.camera(), data.rocket()):
        grey = Image.fromarray(photo).convert("L")
        w, h = grey.size
        for box in ((0, 0, w, h), (w // 4, h // 4, 3 * w // 4, 3 * h // 4), (0, 0, w // 2, h // 2), (w // 2, h // 2, w, h)):
            pixels = np.asarray(grey.crop(box).resize((64, 64), Image.Resampling.BILINEAR), np.float32)
            rows.append((pixels / 127.5 - 1)[np.newaxis, :, :, np.newaxis])
    return rows


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Keras emotion model quantized as for a phone (int8 kernels, float input and output): its softmax is
    followed by a quantize/dequantize pair, which hid it from inferd before."""
    tf = pytest.importorskip("tensorflow")
    import keras

    path = tmp_path_factory.mktemp("tflite") / "emotion-int8.tflite"
    model = keras.models.load_model(zoo_file("keras-emotion"), compile=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row] for row in _calibration_faces())
    path.write_bytes(converter.convert())
    return path


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, int8_tflite: Path) -> Path:
    """Zoo models converted as a user converts them, into one repository served by directory name."""
    root = tmp_path_factory.mktemp("activation-repo")
    labels = tmp_path_factory.mktemp("labels")
    (labels / "emotions.txt").write_text("\n".join(EMOTIONS) + "\n")
    (labels / "direction.txt").write_text("0\n180\n")
    run_inferd("convert", str(zoo_file("keras-emotion")), "-o", str(root / "emotion"), *FER,
               "--labels", str(labels / "emotions.txt"))
    # LiteRT's int8 kernels and ONNX Runtime's round differently: scores a few quantization steps (1/256) apart.
    run_inferd("convert", str(int8_tflite), "-o", str(root / "emotion-int8"), *FER,
               "--labels", str(labels / "emotions.txt"), "--tolerance", "0.1")
    # Unsimplified, the graph ends Softmax -> Identity, as the file has it.
    run_inferd("convert", str(zoo_file("text-cls")), "-o", str(root / "direction"), *PPOCR_CLS, "--no-simplify",
               "--labels", str(labels / "direction.txt"))
    # No labels: not a classifier, and a package name unlike the directory it is served from.
    run_inferd("convert", str(zoo_file("text-cls")), "-o", str(root / "orientation-scores"), *PPOCR_CLS,
               "--name", "ppocr-cls-v2")
    return root


@pytest.fixture(scope="module")
def served(repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=repository)) as live:
        yield live


def _source_scores(name: str, tensor: np.ndarray, int8_tflite: Path) -> np.ndarray:
    """The source model's own output for one preprocessed image, in its own runtime."""
    batch = tensor[np.newaxis]
    if name == "emotion":
        import keras

        model = keras.models.load_model(zoo_file("keras-emotion"), compile=False)
        return np.asarray(model.predict(batch, verbose=0))[0]
    if name == "emotion-int8":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(int8_tflite))
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
        interpreter.invoke()
        return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))[0]
    session = ort.InferenceSession(str(zoo_file("text-cls")), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: batch})[0])[0]


@pytest.mark.parametrize(("name", "image", "atol"), [
    ("emotion", face, 1e-4),  # Keras .h5, ends Dense -> Softmax
    ("emotion-int8", face, 0.05),  # the same model through TFLite int8: Softmax -> QuantizeLinear -> DequantizeLinear
    ("direction", text_line, 1e-4),  # ONNX, Softmax -> Identity
])
def test_served_probabilities_are_the_sources(
    served: LiveServer, repository: Path, int8_tflite: Path, name: str, image: Any, atol: float
) -> None:
    """Finding 7: a model that ends in a softmax gets no second one; /predict returns the source's probabilities."""
    package = ModelPackage.load(repository / name)
    assert package.manifest.classifier is not None and package.manifest.classifier.activation == "none"
    labels = package.manifest.classifier.labels
    response = httpx.post(f"{served.url}/predict/{name}", params={"top_k": len(labels)},
                          files={"image": ("image.png", image(), "image/png")}, timeout=120)
    assert response.status_code == 200, response.text
    returned = {p["label"]: p["probability"] for p in response.json()["predictions"]}
    spec = package.manifest.inputs[0]
    assert isinstance(spec, ImageType)
    expected = _source_scores(name, preprocess_image(image(), spec), int8_tflite)
    assert max(expected) > np.e / (np.e + len(labels) - 1) + 0.1  # more than a second softmax could ever give
    np.testing.assert_allclose([returned[label] for label in labels], expected, atol=atol)


def test_hints_name_the_served_url(served: LiveServer, repository: Path) -> None:
    """Finding 8: a package served as `orientation-scores` but named `ppocr-cls-v2` inside: hints name the URL."""
    assert ModelPackage.load(repository / "orientation-scores").manifest.name == "ppocr-cls-v2"
    response = httpx.post(f"{served.url}/predict/orientation-scores",
                          files={"image": ("line.png", text_line(), "image/png")}, timeout=60)
    assert response.status_code == 400
    message = response.json()["error"]
    assert "'orientation-scores' is not a classifier" in message and "/v2/models/orientation-scores/infer" in message
    assert "ppocr-cls-v2" not in message

    embed = httpx.post(f"{served.url}/embed/orientation-scores", json=["a text"], timeout=60)
    assert embed.status_code == 400 and "POST /predict/orientation-scores" in embed.json()["error"]

    # The URL the hint names answers.
    spec = ModelPackage.load(repository / "orientation-scores").manifest.inputs[0]
    assert isinstance(spec, ImageType)
    tensor = preprocess_image(text_line(), spec)[np.newaxis]
    body = {"inputs": [{"name": spec.name, "datatype": "FP32", "shape": list(tensor.shape),
                        "data": tensor.ravel().tolist()}]}
    answer = httpx.post(f"{served.url}/v2/models/orientation-scores/infer", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_name"] == "orientation-scores"


def test_convert_names_the_package_after_its_directory(tmp_path: Path) -> None:
    """Finding 8: `inferd convert model.onnx -o models/mine` makes a package named "mine", the name it serves as."""
    source = zoo_file("text-cls")
    run_inferd("convert", str(source), "-o", str(tmp_path / "models" / "mine"), *PPOCR_CLS)
    assert ModelPackage.load(tmp_path / "models" / "mine").manifest.name == "mine"
    # repo/<name>/<version>/ serves as <name>
    run_inferd("convert", str(source), "-o", str(tmp_path / "models" / "direction" / "2"), *PPOCR_CLS)
    assert ModelPackage.load(tmp_path / "models" / "direction" / "2").manifest.name == "direction"
    run_inferd("convert", str(source), "-o", str(tmp_path / "models" / "other"), *PPOCR_CLS, "--name", "chosen")
    assert ModelPackage.load(tmp_path / "models" / "other").manifest.name == "chosen"


# ---- the override ----


_DIGIT = ImageType(name="image", shape=(-1, 1, 8, 8), color_layout="GRAY")


class Head(torch.nn.Module):
    """The trained digits CNN with a head on its logits, written as users write them."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.cnn = train_torch_cnn()
        self.kind = kind

    def forward(self, image: Any) -> Any:
        logits = self.cnn(image)
        if self.kind == "softmax":  # then a reshape, which hid the softmax from inferd before
            return torch.nn.functional.softmax(logits, dim=1).reshape(-1, len(LABELS))
        if self.kind == "exp-sum":  # a softmax written out: no Softmax op in the graph
            exps = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            return exps / exps.sum(dim=1, keepdim=True)
        if self.kind == "sigmoid":
            return torch.sigmoid(logits)
        if self.kind == "log-softmax":
            return torch.log_softmax(logits, dim=1)
        return logits


def test_activation_flag_overrides_detection(tmp_path: Path) -> None:
    (tmp_path / "direction.txt").write_text("0\n180\n")
    run_inferd("convert", str(zoo_file("text-cls")), "-o", str(tmp_path / "forced"), *PPOCR_CLS,
               "--labels", str(tmp_path / "direction.txt"), "--activation", "softmax")
    classifier = ModelPackage.load(tmp_path / "forced").manifest.classifier
    assert classifier is not None and classifier.activation == "softmax"  # detection alone says "none"

    wrong = CliRunner().invoke(app, ["convert", str(zoo_file("text-cls")), "-o", str(tmp_path / "wrong"), *PPOCR_CLS,
                                     "--labels", str(tmp_path / "direction.txt"), "--activation", "probabilities"])
    assert isinstance(wrong.exception, InferdError)  # one red line from `inferd`, not a traceback
    assert "activation" in wrong.exception.message and "'none'" in wrong.exception.message
    unlabelled = CliRunner().invoke(app, ["convert", str(zoo_file("text-cls")), "-o", str(tmp_path / "bare"),
                                          *PPOCR_CLS, "--activation", "none"])
    assert isinstance(unlabelled.exception, InferdError) and "--labels" in unlabelled.exception.message
    assert not (tmp_path / "bare").exists()


def test_activation_option_is_part_of_the_conversion_cache_key(tmp_path: Path) -> None:
    from inferd.convert import ConvertOptions
    from inferd.runtime.sources import resolve_source

    options = ConvertOptions(labels=("0", "180"), input_shape=(1, 3, 48, 192))
    detected = resolve_source(zoo_file("text-cls"), options=options, cache_dir=tmp_path)
    forced = resolve_source(zoo_file("text-cls"), options=options.model_copy(update={"activation": "sigmoid"}),
                            cache_dir=tmp_path)
    again = resolve_source(zoo_file("text-cls"), options=options, cache_dir=tmp_path)
    assert detected.package.manifest.classifier is not None and forced.package.manifest.classifier is not None
    assert (detected.package.manifest.classifier.activation, forced.package.manifest.classifier.activation) == (
        "none", "sigmoid")
    assert forced.conversion_cached is False and again.conversion_cached is True


def test_python_converters_take_the_activation() -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    estimator = LogisticRegression(max_iter=300).fit(digits.data[:500], digits.target[:500])
    forced = inferd.convert(estimator, sample_inputs=digits.data[500:520], activation="softmax")
    assert forced.manifest.classifier is not None and forced.manifest.classifier.activation == "softmax"
    assert inferd.convert(estimator, sample_inputs=digits.data[500:520]).manifest.classifier.activation == "none"

    net = Head("softmax")
    forced = inferd.convert(net, inputs=[_DIGIT], classifier_labels=LABELS, activation="softmax")
    assert forced.manifest.classifier is not None and forced.manifest.classifier.activation == "softmax"


# ---- what each head gets, judged by the probabilities a prediction returns ----


def _probabilities(kind: str, outputs: np.ndarray) -> np.ndarray:
    """What the head's outputs mean as probabilities."""
    if kind == "logits":
        return softmax(outputs, axis=1)
    if kind == "log-softmax":
        return np.exp(outputs)
    return outputs


@pytest.mark.parametrize(("kind", "activation"), [
    ("softmax", "none"), ("exp-sum", "none"), ("sigmoid", "none"), ("log-softmax", "softmax"), ("logits", "softmax"),
])
def test_each_head_gets_the_activation_that_makes_probabilities(kind: str, activation: str, tmp_path: Path) -> None:
    """Finding 7 for PyTorch, which gave every classifier a softmax: only logits (and log-probabilities) get one."""
    net = Head(kind)
    images = held_out(16)[0][:, None]
    package = inferd.convert(net, inputs=[_DIGIT], classifier_labels=LABELS).save(tmp_path / kind)
    classifier = package.manifest.classifier
    assert classifier is not None and classifier.activation == activation

    with torch.inference_mode():
        expected = _probabilities(kind, net(torch.from_numpy(images)).numpy())
    model = inferd.load(tmp_path / kind, precision="fp32")
    scores = model.predict({"image": images})[classifier.output]
    ranked = top_k(scores, classifier.labels, k=len(LABELS), activation=classifier.activation)
    returned = np.array([[p.probability for p in sorted(row, key=lambda p: p.index)] for row in ranked])
    np.testing.assert_allclose(returned, expected, atol=1e-4)
