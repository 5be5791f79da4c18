"""Typed execution and AUTO's precision chosen by measured fidelity, on real models.

The package's type is the minimum precision; AUTO keeps a reduced precision only
where the package's own samples show every output within `inferd.tolerance`.
On a CPU without AVX512-BF16 no reduced precision is native, so the measurement
is not needed there; the typed rule itself is checked on a device that offers
bf16 (described, not emulated: `plan` reads only the device's precisions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inferd import tolerance
from inferd.optimize import to_fp16
from inferd.package import ModelPackage
from inferd.runtime import devices, load
from inferd.runtime.backends.openvino import OpenVINOBackend
from inferd.runtime.devices import Device
from inferd.runtime.precision import plan, reference_outputs
from inferd.types import Precision
from tests.conftest import LiveServer
from tests.zoo import zoo_file

# PP-OCR's preprocessing: BGR, (pixel / 255 - mean) / std
OCR_IMAGE = ["--image", "--color-layout", "BGR", "--resize", "stretch",
             "--scale", "0.01712", "--scale", "0.01751", "--scale", "0.01743",
             "--bias", "-2.1179", "--bias", "-2.0357", "--bias", "-1.8044"]


def _bf16_here() -> bool:
    return any(d.backend == "openvino" and "bf16" in d.precisions for d in devices())


@pytest.fixture(scope="module")
def text_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """PP-OCRv4's text detector at 736x736: a sigmoid probability map that bf16 visibly damages."""
    from typer.testing import CliRunner

    from inferd.cli import app

    target = tmp_path_factory.mktemp("zoo") / "text-det"
    result = CliRunner().invoke(app, ["convert", str(zoo_file("text-det")), "-o", str(target),
                                      "--input-shape", "1,3,736,736", *OCR_IMAGE])
    assert result.exit_code == 0, result.output
    return target


@pytest.fixture(scope="module")
def fp16_package(default_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_fp16(ModelPackage.load(default_package)).save(tmp_path_factory.mktemp("fp16") / "lite0-fp16").path  # type: ignore[return-value]


def test_conversion_keeps_real_photographs_as_samples(text_detector: Path) -> None:
    package = ModelPackage.load(text_detector)
    samples = package.samples()
    assert samples is not None and set(samples) == {"x"}
    assert samples["x"].shape[1:] == (3, 736, 736) and 1 <= len(samples["x"]) <= 4
    assert samples["x"].std() > 0.1  # a photograph, preprocessed: not a constant


def test_default_precision_keeps_the_probability_map(text_detector: Path, tmp_path: Path) -> None:
    """Finding 1: AUTO ran bf16 and flipped about 2.5% of the mask's pixels on a photograph, silently."""
    package = ModelPackage.load(text_detector)
    samples = package.samples()
    assert samples is not None
    model = load(text_detector, cache_dir=tmp_path)
    reference = reference_outputs(package, samples)["sigmoid_0.tmp_0"]
    served = np.concatenate([model.predict({"x": row[np.newaxis]})["sigmoid_0.tmp_0"] for row in samples["x"]])
    judged = tolerance.compare("sigmoid_0.tmp_0", reference, served)
    assert judged.passed, judged.reason
    assert judged.threshold_flips is not None and judged.threshold_flips <= tolerance.FLIP_BUDGET
    choice = model.load_info.precision_choice
    assert choice["requested"] == "auto" and choice["chosen"] == model.load_info.precision
    if _bf16_here():
        assert choice["considered"] == "bf16" and model.load_info.precision == "fp32"
        assert "changed side of 0.5" in choice["reason"]
        # the decision is kept with the compiled model: the next load neither measures nor changes it
        again = load(text_detector, cache_dir=tmp_path)
        assert again.load_info.cached and again.load_info.precision_choice == choice


def test_default_precision_keeps_bf16_where_it_measures_fine(default_package: Path, tmp_path: Path) -> None:
    model = load(default_package, backend="openvino", cache_dir=tmp_path)
    choice = model.load_info.precision_choice
    if not _bf16_here():
        assert model.load_info.precision == "fp32" and choice["considered"] is None
        return
    assert choice["considered"] == "bf16"
    assert model.load_info.precision == choice["chosen"]
    assert [output["output"] for output in choice["outputs"]] == ["logits"]
    assert choice["outputs"][0]["kind"] == "classes"


def test_forced_precision_is_not_second_guessed(text_detector: Path, tmp_path: Path) -> None:
    if not _bf16_here():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16/AMX)")
    model = load(text_detector, backend="openvino", precision="bf16", cache_dir=tmp_path)
    assert model.load_info.precision == "bf16"
    assert model.load_info.precision_choice["reason"] == "bf16 was asked for"


def test_typed_execution_on_a_device_with_bf16() -> None:
    """An fp16 package never runs in bf16 (8 bits of mantissa to fp16's 11) unless bf16 is asked for."""
    backend = OpenVINOBackend()
    with_bf16 = Device(backend="openvino", id="CPU", kind="cpu", name="a bf16 CPU", precisions=("fp32", "bf16"))
    with_both = Device(backend="openvino", id="CPU", kind="cpu", name="an AMX-FP16 CPU",
                       precisions=("fp32", "bf16", "fp16"))
    assert plan(backend, with_bf16, Precision.AUTO, "fp16").precision is Precision.FP32  # type: ignore[union-attr]
    assert plan(backend, with_both, Precision.AUTO, "fp16").precision is Precision.FP16  # type: ignore[union-attr]
    fp32 = plan(backend, with_bf16, Precision.AUTO, "fp32")
    assert fp32 is not None and fp32.precision is Precision.BF16 and fp32.fallback is Precision.FP32
    asked = plan(backend, with_bf16, Precision.BF16, "fp16")
    assert asked is not None and asked.precision is Precision.BF16 and asked.fallback is None


def test_fp16_package_never_runs_bf16_by_default(fp16_package: Path, tmp_path: Path) -> None:
    model = load(fp16_package, backend="openvino", cache_dir=tmp_path)
    assert model.load_info.precision in ("fp16", "fp32")
    assert "never computes in bf16" in model.load_info.precision_choice["reason"] or not _bf16_here()


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_fp16_package_keeps_its_output_names_uncached_and_cached(
    fp16_package: Path, chelsea_tensor: np.ndarray, tmp_path: Path, precision: str
) -> None:
    """Finding 2: OpenVINO named an fp16 package's output `graph_output_cast_0` on its first, uncached compile."""
    for expect_cached in (False, True):
        model = load(fp16_package, backend="openvino", precision=precision, cache_dir=tmp_path)
        assert model.load_info.cached is expect_cached
        outputs = model.predict({"image": chelsea_tensor})
        assert list(outputs) == ["logits"] and outputs["logits"].shape == (1, 1000)


def test_predict_cli_on_an_uncached_fp16_package(fp16_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from skimage import data
    from typer.testing import CliRunner

    from inferd.cli import app
    from tests.conftest import encode

    photo = tmp_path / "chelsea.png"
    photo.write_bytes(encode(data.chelsea()))
    monkeypatch.setenv("INFERD_CACHE_DIR", str(tmp_path / "fresh-cache"))
    result = CliRunner().invoke(app, ["predict", str(fp16_package), str(photo), "--backend", "openvino"])
    assert result.exit_code == 0, result.output
    assert "cat" in result.output


def test_server_reports_the_precision_choice(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    config = client.get_model_config("efficientnet-lite0")
    reason = config["parameters"]["precision_choice"]["string_value"]
    assert config["parameters"]["precision"]["string_value"] in reason or "fp32" in reason
    with caplog.at_level("INFO", logger="inferd"):
        client.load_model("efficientnet-lite0")  # a reload logs its precision and why
    assert any("precision:" in record.getMessage() for record in caplog.records)


def _file_rows() -> np.ndarray:
    """Magika's features of real files of several types: Python, JSON, text, HTML, a PNG."""
    import json
    import os
    import sys

    from skimage import data

    from tests.conftest import encode
    from tests.test_zoo import _magika_row

    files = [Path(os.__file__).read_bytes(), json.dumps({"numbers": list(range(300))}).encode(),
             Path(sys.prefix, "pyvenv.cfg").read_bytes(), b"<html><body><p>hello</p></body></html>\n" * 40,
             encode(data.coffee())]
    return np.stack([_magika_row(content) for content in files])


def test_a_model_without_typical_inputs_stays_fp32(tmp_path: Path) -> None:
    """Random bytes are no evidence: the file-type classifier kept bf16 on them and moved a probability by 0.1 on a
    real JSON file. Without samples AUTO keeps fp32; with the user's samples it measures."""
    from typer.testing import CliRunner

    from inferd.cli import app

    bare, sampled = tmp_path / "file-type", tmp_path / "file-type-sampled"
    rows = tmp_path / "rows.npz"
    np.savez(rows, bytes=_file_rows())
    for target, extra in ((bare, []), (sampled, ["--samples", str(rows)])):
        result = CliRunner().invoke(app, ["convert", str(zoo_file("file-type")), "-o", str(target), *extra])
        assert result.exit_code == 0, result.output
    assert ModelPackage.load(bare).samples() is None
    kept = ModelPackage.load(sampled).samples()
    assert kept is not None and np.array_equal(kept["bytes"], _file_rows()[:len(kept["bytes"])])

    model = load(bare, backend="openvino", cache_dir=tmp_path / "cache")
    assert model.load_info.precision == "fp32"
    if _bf16_here():
        assert "keeps no typical inputs" in model.load_info.precision_choice["reason"]
        measured = load(sampled, backend="openvino", cache_dir=tmp_path / "cache")
        choice = measured.load_info.precision_choice
        assert choice["considered"] == "bf16" and choice["outputs"]
        assert choice["chosen"] == ("bf16" if all(o["passed"] for o in choice["outputs"]) else "fp32")


def test_samples_that_do_not_fit_the_inputs_are_refused(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inferd.cli import app

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, data=np.zeros((2, 2048), np.int32))
    result = CliRunner().invoke(app, ["convert", str(zoo_file("file-type")), "-o", str(tmp_path / "p"),
                                      "--samples", str(wrong)])
    assert result.exit_code != 0 and "the model's inputs are ['bytes']" in str(result.exception)
    assert not (tmp_path / "p").exists()
