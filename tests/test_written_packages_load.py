"""A package `convert` or `optimize` says it wrote loads on every backend (issue 16, finding 3).

int8 on an opset-11 graph used to write per-channel DequantizeLinear nodes that
need opset 13: ONNX Runtime refused the package as INVALID_GRAPH, OpenVINO could
not convert it, and `optimize` still printed "wrote" and exited 0.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import inferd
from inferd.convert import convert_onnx
from inferd.io.images import to_tensor
from inferd.package import ModelPackage
from inferd.runtime.backends import available_backends
from tests.test_cli import inferd as run_inferd
from tests.text_crops import text_cls_package, text_crops

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter's retirement notice
BACKENDS = [backend.name for backend in available_backends()]


def test_int8_of_an_opset_11_classifier_loads_everywhere_and_agrees_with_fp32(tmp_path: Path) -> None:
    crops = text_crops()
    calibration = tmp_path / "crops"
    calibration.mkdir()
    for index, crop in enumerate(crops):
        crop.save(calibration / f"{index}.png")
    original = text_cls_package().save(tmp_path / "fp32")
    assert original.onnx_model.opset_import[0].version == 11
    output = tmp_path / "int8"
    result = run_inferd("optimize", str(original.path), "-o", str(output), "--pipeline", "int8",
                        "--calibration", str(calibration))
    assert result.returncode == 0, result.stderr

    spec, name = original.manifest.inputs[0], original.manifest.outputs[0].name
    crops_tensor = np.stack([to_tensor(crop, spec) for crop in crops])  # type: ignore[arg-type]
    reference = inferd.load(original.path, backend="onnxruntime", precision="fp32").predict({spec.name: crops_tensor})
    truth = [0] * (len(crops) // 2) + [1] * (len(crops) // 2)  # upright, then turned 180 degrees
    assert np.mean(reference[name].argmax(1) == truth) >= 0.9  # the model reads these crops
    assert set(BACKENDS) >= {"openvino", "onnxruntime"}
    for backend in BACKENDS:
        quantized = inferd.load(output, backend=backend, precision="fp32").predict({spec.name: crops_tensor})
        assert list(quantized) == [name], backend
        agreement = float(np.mean(quantized[name].argmax(1) == reference[name].argmax(1)))
        assert agreement >= 0.9, (backend, agreement)
        assert np.abs(quantized[name] - reference[name]).max() <= 0.2, backend
    step = ModelPackage.load(output).manifest.compression[-1]  # the graph was brought to opset 13 first, and says so
    assert step.kind == "int8" and step.details["opset_upgrade"]["from"] == 11
    assert step.details["opset_upgrade"]["to"] == 13 and step.details["opset_upgrade"]["max_abs_diff"] <= 1e-5


@pytest.mark.parametrize("pipeline", ["int8-weights", "prune:0.5", "fp16,int8-weights"])
def test_compressions_upgrade_an_old_graph_first_and_record_it(pipeline: str) -> None:
    """The weight compressions write opset-13 ops too; they used to refuse an opset-11 package."""
    from inferd import optimize as opt

    original = text_cls_package()
    compressed = opt.compress(original, pipeline)
    assert compressed.onnx_model.opset_import[0].version == 13
    first, *rest = compressed.manifest.compression  # the graph is upgraded once, before the first step
    assert first.details["opset_upgrade"] == {"from": 11, "to": 13, "checked_samples": 4, "max_abs_diff": 0.0}
    assert all("opset_upgrade" not in step.details for step in rest)


@pytest.fixture(scope="module")
def determinant_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model OpenVINO cannot compile: it ends in a determinant (ONNX `Det`, which OpenVINO has no conversion
    rule for), as a model predicting an affine warp reports the warp's area scale. ONNX Runtime runs it."""

    class AreaScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Conv2d(3, 16, 3, stride=2)
            self.warp = torch.nn.Linear(16, 4)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            warp = self.warp(self.features(image).mean((2, 3))).reshape(-1, 2, 2)
            return torch.linalg.det(warp)

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(AreaScale().eval(), (torch.zeros(1, 3, 32, 32),), buffer, dynamo=False,
                      input_names=["image"], output_names=["scale"], opset_version=17)
    path = tmp_path_factory.mktemp("det") / "area-scale.onnx"
    path.write_bytes(buffer.getvalue())
    return path


def _refusal(result_stderr: str) -> None:
    assert "openvino" in result_stderr and "Det" in result_stderr, result_stderr
    assert "was not written" in result_stderr


@pytest.mark.skipif("openvino" not in BACKENDS, reason="the failing backend is OpenVINO")
def test_convert_refuses_a_package_a_backend_cannot_load(determinant_onnx: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "area-scale"
    result = run_inferd("convert", str(determinant_onnx), "-o", str(output))
    assert result.returncode != 0
    _refusal(result.stderr)
    assert not output.exists() and list((tmp_path / "out").iterdir()) == []  # no staging directory left either


@pytest.mark.skipif("openvino" not in BACKENDS, reason="the failing backend is OpenVINO")
def test_optimize_refuses_a_package_a_backend_cannot_load(determinant_onnx: Path, tmp_path: Path) -> None:
    source = convert_onnx(determinant_onnx).save(tmp_path / "source")  # the Python API writes without loading
    output = tmp_path / "out" / "small"
    result = run_inferd("optimize", str(source.path), "-o", str(output), "--pipeline", "int8-weights")
    assert result.returncode != 0
    _refusal(result.stderr)
    assert not output.exists() and list((tmp_path / "out").iterdir()) == []

    # --force over an existing package: refused, the old package stays as it was
    kept = text_cls_package().save(output)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in output.iterdir())
    result = run_inferd("optimize", str(source.path), "-o", str(output), "--pipeline", "int8-weights", "--force")
    assert result.returncode != 0
    _refusal(result.stderr)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in output.iterdir()) == before
    assert ModelPackage.load(output).manifest.name == kept.manifest.name
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["small"]


def test_check_serves_scikit_learn_packages_on_the_backends_that_implement_their_operators(tmp_path: Path) -> None:
    """OpenVINO implements no ai.onnx.ml operators; such a package is written and served by ONNX Runtime."""
    pytest.importorskip("skl2onnx")
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from inferd.convert import convert_sklearn
    from inferd.runtime.check import check_loads

    digits = load_digits()
    estimator = LogisticRegression(max_iter=200).fit(digits.data[:300], digits.target[:300])
    package = convert_sklearn(estimator, sample_inputs=digits.data[300:310]).save(tmp_path / "digits")
    results = {result.backend: result for result in check_loads(package)}
    assert results["onnxruntime"].skipped is None and results["onnxruntime"].device
    if "openvino" in results:
        assert results["openvino"].skipped == "openvino implements no ai.onnx.ml operators"
