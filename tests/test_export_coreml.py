"""Core ML export: real conversions read back from disk with coremltools, on Linux (prediction needs macOS).

The default model is exported once per variant (module fixtures) because each
conversion takes seconds; the cases that need only some network use a small
CNN converted in the test, which has no source factory and so also exercises
the ONNX → onnx2torch route.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("coremltools") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("the Core ML export needs coremltools and onnx2torch (pip install -e '.[dev]', make test)",
                allow_module_level=True)

import inferd
from inferd.errors import PackageError
from inferd.export import CoreMLExport, ExportError, UnsupportedOperation, to_coreml
from inferd.export.coreml import weights_bytes
from inferd.types import ImageType

PER_CHANNEL_SCALE = (1 / 58.4, 1 / 57.1, 1 / 57.4)


def spec_of(path: Path) -> Any:
    import coremltools as ct

    return ct.models.MLModel(str(path), skip_model_load=True).get_spec()


def operations(spec: Any) -> list[Any]:
    main = spec.mlProgram.functions["main"]
    return list(main.block_specializations[main.opset].operations)


def op_counts(spec: Any) -> Counter[str]:
    return Counter(op.type for op in operations(spec))


def immediate_floats(spec: Any) -> dict[str, np.ndarray]:
    """Small constants are stored in the program itself (large ones in weight.bin): name → values."""
    from coremltools.proto import MIL_pb2

    found = {}
    for op in operations(spec):
        if op.type != "const":
            continue
        value = op.attributes["val"]
        tensor = value.immediateValue.tensor
        if tensor.HasField("floats"):
            found[op.outputs[0].name] = np.array(tensor.floats.values)
        elif tensor.HasField("bytes") and value.type.tensorType.dataType == MIL_pb2.FLOAT16:
            found[op.outputs[0].name] = np.frombuffer(tensor.bytes.values, np.float16).astype(np.float64)
    return found


def producer_of_input(spec: Any, input_name: str, op_type: str) -> Any:
    return next(op for op in operations(spec) if op.type == op_type
                and input_name in [arg.name for arg in op.inputs["x"].arguments])


class SmallNet:
    """A CNN with enough weights to be compressed (Core ML skips tensors under 2048 elements)."""

    @staticmethod
    def build(extra: Any = None) -> Any:
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(),
                                                    torch.nn.Conv2d(32, 128, 3), torch.nn.ReLU())
                self.head = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                features = self.features(x)
                if extra is not None:
                    features = extra(features)
                return self.head(features.mean((2, 3)))

        torch.manual_seed(0)
        return Net().eval()


def small_package(directory: Path, module: Any = None, **image: Any) -> inferd.ModelPackage:
    spec = ImageType(name="image", shape=(1, 3, 32, 32), **({"scale": 1 / 255} | image))
    package = inferd.convert(module or SmallNet.build(), inputs=[spec], classifier_labels=[f"class {i}" for i in range(10)],
                             metadata={"name": "small", "author": "tests", "license": "MIT", "version": "3"})
    return package.save(directory / "small")


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, default_package: Path) -> Iterator[dict[str, CoreMLExport]]:
    directory = tmp_path_factory.mktemp("coreml")
    yield {
        "fp16": to_coreml(default_package, directory / "fp16.mlpackage"),
        "palettized": to_coreml(default_package, directory / "pal4.mlpackage", compress="palettize:4"),
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> inferd.ModelPackage:
    return small_package(tmp_path_factory.mktemp("small"), scale=PER_CHANNEL_SCALE, bias=(-2.1, -2.0, -1.8),
                         color_layout="BGR")


def test_default_model_image_input_classifier_and_metadata(exports: dict[str, CoreMLExport]) -> None:
    from inferd.zoo.efficientnet_lite0 import imagenet_labels

    result = exports["fp16"]
    assert result.source == "pytorch factory inferd.zoo.efficientnet_lite0:torch_model"
    assert result.max_abs_diff_vs_package < 1e-3
    spec = spec_of(result.path)
    assert spec.WhichOneof("Type") == "mlProgram"
    (image,) = spec.description.input
    assert image.name == "image"
    assert (image.type.imageType.width, image.type.imageType.height) == (224, 224)
    assert image.type.imageType.colorSpace == image.type.imageType.RGB
    assert "256 px" in image.shortDescription and "224x224" in image.shortDescription  # the resize the app must do
    # An ML program applies the ImageType's scale and bias as its first ops on the image.
    constants = immediate_floats(spec)
    scaled = producer_of_input(spec, "image", "mul")
    assert constants[scaled.inputs["y"].arguments[0].name] == pytest.approx([1 / 128])
    biased = producer_of_input(spec, scaled.outputs[0].name, "add")
    assert constants[biased.inputs["y"].arguments[0].name] == pytest.approx([-127 / 128] * 3)
    # The classifier: softmax probabilities over the 1000 ImageNet labels.
    assert [o.name for o in spec.description.output] == ["classLabel", "classLabel_probs"]
    assert spec.description.predictedProbabilitiesName == "classLabel_probs"
    classify = next(op for op in operations(spec) if op.type == "classify")
    labels = classify.inputs["classes"].arguments[0].value.immediateValue.list.values
    assert [label.immediateValue.tensor.strings.values[0] for label in labels] == imagenet_labels()
    assert op_counts(spec)["softmax"] == 1
    meta = spec.description.metadata
    assert meta.author.startswith("Google") and meta.license == "Apache-2.0" and meta.versionString == "1"
    assert "EfficientNet-Lite0" in meta.shortDescription
    assert meta.userDefined["inferd.package"] == "efficientnet-lite0 1"


def test_palettize_4_bits_shrinks_weights(exports: dict[str, CoreMLExport]) -> None:
    plain, palettized = exports["fp16"], exports["palettized"]
    assert op_counts(spec_of(plain.path))["constexpr_lut_to_dense"] == 0
    assert op_counts(spec_of(palettized.path))["constexpr_lut_to_dense"] >= 40  # every conv and the classifier
    ratio = weights_bytes(plain.path) / weights_bytes(palettized.path)
    assert ratio >= 3.5, ratio
    assert palettized.weights_bytes_uncompressed == weights_bytes(plain.path)
    assert palettized.compression == ("palettize:4",) and palettized.compression_ratio == pytest.approx(ratio)


def test_fp32_keeps_full_precision_weights(small: inferd.ModelPackage, tmp_path: Path) -> None:
    fp16 = to_coreml(small, tmp_path / "fp16.mlpackage")
    fp32 = to_coreml(small, tmp_path / "fp32.mlpackage", precision="fp32")
    assert 1.9 < weights_bytes(fp32.path) / weights_bytes(fp16.path) < 2.1
    assert op_counts(spec_of(fp16.path))["cast"] > 0 and op_counts(spec_of(fp32.path))["cast"] == 0


def test_onnx_only_package_per_channel_scale_and_bgr(small: inferd.ModelPackage, tmp_path: Path) -> None:
    result = to_coreml(small, tmp_path / "small.mlpackage")
    assert result.source == "onnx2torch from model.onnx"
    spec = spec_of(result.path)
    image = spec.description.input[0].type.imageType
    assert image.colorSpace == image.BGR
    # Core ML's ImageType has one scale for all channels: the per-channel scale is computed inside the model.
    values = list(immediate_floats(spec).values())
    assert any(v.shape == (3,) and np.allclose(v, PER_CHANNEL_SCALE, rtol=1e-3) for v in values)
    assert any(v.shape == (3,) and np.allclose(v, (-2.1, -2.0, -1.8), rtol=1e-3) for v in values)
    assert spec.description.metadata.author == "tests" and spec.description.metadata.versionString == "3"


def test_tensor_export_as_inferd_runtime_uses_it(small: inferd.ModelPackage, tmp_path: Path) -> None:
    result = to_coreml(small, tmp_path / "tensors.mlpackage", image_inputs=False, classifier=False)
    spec = spec_of(result.path)
    (image,) = spec.description.input
    assert list(image.type.multiArrayType.shape) == [1, 3, 32, 32]
    (logits,) = spec.description.output
    assert logits.name == "logits" and logits.type.multiArrayType.dataType == logits.type.multiArrayType.FLOAT32
    assert op_counts(spec)["classify"] == 0 and op_counts(spec)["softmax"] == 0


def test_in_memory_package_straight_from_a_converter(tmp_path: Path) -> None:
    import torch

    class Gray(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = SmallNet.build()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.network(x.expand(-1, 3, -1, -1))

    package = inferd.convert(Gray(), inputs=[ImageType(name="image", shape=(1, 1, 32, 32), color_layout="GRAY")])
    assert package.path is None  # never saved: what a source auto-detection would hand over
    result = to_coreml(package, tmp_path / "gray.mlpackage", classifier=False)
    image = spec_of(result.path).description.input[0].type.imageType
    assert image.colorSpace == image.GRAYSCALE and result.max_abs_diff_vs_package < 1e-3


# Three weight tensors are over Core ML's 2048-element threshold; grouping 64 channels leaves out the 10-class head.
@pytest.mark.parametrize(("compress", "target", "op", "count"), [
    ("quantize:8", "macOS13", "constexpr_affine_dequantize", 3),
    ("prune:2:4", "macOS13", "constexpr_sparse_to_dense", 3),
    ("palettize:4:64", "iOS18", "constexpr_lut_to_dense", 2),
    ("prune:0.5,palettize:4", "macOS15", "constexpr_lut_to_sparse", 3),
])
def test_compressions(small: inferd.ModelPackage, tmp_path: Path, compress: str, target: str, op: str, count: int) -> None:
    result = to_coreml(small, tmp_path / "c.mlpackage", compress=compress, minimum_deployment_target=target)
    assert op_counts(spec_of(result.path))[op] == count
    assert result.weights_bytes < result.weights_bytes_uncompressed / 1.7
    if count < 3:  # the weight left out is reported, with the reason
        assert any("(10) is not divisible by channel_group_size (64)" in note for note in result.notes), result.notes


def test_unsupported_op_is_named_with_its_node(tmp_path: Path) -> None:
    import torch

    network = SmallNet.build(extra=lambda features: torch.fmod(features, 1.5))
    package = small_package(tmp_path, network)
    with pytest.raises(UnsupportedOperation, match=r"op 'fmod' \(node .*fmod.*test_export_coreml.py.*register_torch_op"):
        to_coreml(package, tmp_path / "a.mlpackage", source=network)
    with pytest.raises(UnsupportedOperation, match=r"op 'fmod' \(node .*aten::fmod from ONNX node 'node_fmod' \(Mod\)\)"):
        to_coreml(package, tmp_path / "b.mlpackage")  # the same graph rebuilt from its ONNX
    assert not (tmp_path / "a.mlpackage").exists() and not (tmp_path / "b.mlpackage").exists()


def test_onnx_op_onnx2torch_cannot_take_is_named(tmp_path: Path) -> None:
    import torch

    network = SmallNet.build(extra=lambda f: f * torch.linalg.det(f[:, 0, :4, :4]).reshape(-1, 1, 1, 1))
    with pytest.raises(UnsupportedOperation, match=r"Det \(node '.*'\)"):
        to_coreml(small_package(tmp_path, network), tmp_path / "det.mlpackage")


def test_package_from_another_network_is_refused(small: inferd.ModelPackage, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from the package"):
        to_coreml(small, tmp_path / "x.mlpackage", source=SmallNet.build(extra=lambda f: f * 2))


@pytest.mark.parametrize(("options", "message"), [
    ({"compress": "palettize:5"}, "palettizes to 1, 2, 3, 4, 6, 8 bits, not 5"),
    ({"compress": "palettize:0"}, "not 0"),
    ({"compress": "palettize"}, "wrong number of values"),
    ({"compress": "quantize:16"}, "8 or 4 bits, not 16"),
    ({"compress": "prune:1.5"}, "between 0 and 1"),
    ({"compress": "prune:4:2"}, "0 < N < M"),
    ({"compress": "zip:4"}, "unknown compression 'zip'"),
    ({"compress": "palettize:4,,prune:0.5"}, "empty step"),
    ({"compress": "palettize:4,palettize:2"}, "twice"),
    ({"compress": "palettize:4:16"}, "grouped-channel palettization .* needs .* iOS18/macOS15"),
    ({"compress": "prune:0.5,palettize:4"}, "joint compression .*--target macOS15"),
    ({"precision": "int8"}, "fp16 or fp32"),
    ({"minimum_deployment_target": "macOS99"}, "choose one of .*macOS13"),
    ({"minimum_deployment_target": "iOS14"}, "choose one of"),
    ({"source": "tensorflow"}, "auto, factory or onnx"),
    ({"source": "factory"}, "names no source factory"),
])
def test_bad_options(small: inferd.ModelPackage, tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        to_coreml(small, tmp_path / "x.mlpackage", **options)


def test_text_package_is_refused(default_repository: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="'text' is a text input, tokenized by inferd outside the graph"):
        to_coreml(default_repository / "minilm-l6", tmp_path / "x.mlpackage")


def test_bad_paths(small: inferd.ModelPackage, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package directory"):
        to_coreml(tmp_path / "missing", tmp_path / "x.mlpackage")
    with pytest.raises(ExportError, match=r"name it model\.mlpackage"):
        to_coreml(small, tmp_path / "model.mlmodel")
    (tmp_path / "taken.mlpackage").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        to_coreml(small, tmp_path / "taken.mlpackage")


def inferd_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})


def test_cli_export(small: inferd.ModelPackage, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from inferd.cli import app

    target = tmp_path / "out" / "small8.mlpackage"
    result = CliRunner().invoke(app, ["export", "coreml", str(small.path), "-o", str(target), "--compress", "quantize:8",
                                      "--target", "iOS17", "--precision", "fp32"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for words in ("onnx2torch", "quantize:8", "fp32 / iOS17", "smaller"):
        assert words in result.stdout
    assert op_counts(spec_of(target))["constexpr_affine_dequantize"] == 3
    # A model file is converted into a package first (cached), then exported: here the small model's bare ONNX.
    onnx_file = tmp_path / "small.onnx"
    shutil.copy(small.model_path, onnx_file)
    result = CliRunner().invoke(app, ["export", "coreml", str(onnx_file), "-o", str(tmp_path / "from_onnx.mlpackage")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    (tensor,) = spec_of(tmp_path / "from_onnx.mlpackage").description.input  # no --image given: a plain tensor
    assert list(tensor.type.multiArrayType.shape) == [1, 3, 32, 32]


def test_cli_errors_are_one_line(small: inferd.ModelPackage, tmp_path: Path) -> None:
    bad = inferd_cli("export", "coreml", str(small.path), "-o", str(tmp_path / "x.mlpackage"), "--compress", "palettize:9")
    assert bad.returncode == 2 and "not 9" in bad.stderr and "Traceback" not in bad.stderr
    missing = inferd_cli("export", "coreml", str(tmp_path / "nope"), "-o", str(tmp_path / "x.mlpackage"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "x.mlpackage").exists()
