"""Core ML export of ONNX-only packages with the ops onnx2torch lacks or gets wrong, and failures that name the node.

Each graph is a small real ONNX model built with onnx.helper, made a package by
inferd's ONNX converter and saved, as a user's file would be. The network
rebuilt in PyTorch is checked against ONNX Runtime at fp32 on real photographs,
and the written ML program is read back with coremltools (prediction needs
macOS): reflect and edge pads must not reach Core ML as a pad op padding
outside the last two axes, which the device's runtime refuses to load.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from skimage import data
from typer.testing import CliRunner

if importlib.util.find_spec("coremltools") is None or importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("the Core ML export needs coremltools and onnx2torch (pip install -e '.[dev]', make test)",
                allow_module_level=True)

import inferd
from inferd.cli import app
from inferd.convert import convert_onnx
from inferd.export import ExportError, UnsupportedOperation, to_coreml
from inferd.types import ImageType, TensorType
from tests.test_export_coreml import inferd_cli, op_counts, operations, spec_of
from tests.zoo import zoo_file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

VIDEO = (1, 3, 4, 24, 24)  # batch, channels, frames, height, width


def graph(nodes: list[Any], inputs: dict[str, tuple[int, ...]], outputs: dict[str, tuple[int, ...]],
          initializers: dict[str, np.ndarray] | None = None, opset: int = 13) -> onnx.ModelProto:
    def values(shapes: dict[str, tuple[int, ...]]) -> list[Any]:
        return [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in shapes.items()]

    weights = [numpy_helper.from_array(array, name) for name, array in (initializers or {}).items()]
    model = helper.make_model(helper.make_graph(nodes, "test", values(inputs), values(outputs), weights),
                              opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    return model


def save_package(model: onnx.ModelProto, directory: Path, name: str, **options: Any) -> Path:
    package = convert_onnx(model, metadata={"name": name, "author": "tests", "license": "MIT", "version": "1"}, **options)
    return package.save(directory / name).path  # type: ignore[return-value]


def photo_batch(shape: tuple[int, ...]) -> np.ndarray:
    """Crops of skimage's photographs scaled to -1..1: the frames of a video for 5-D shapes, one picture for 4-D."""
    *_, height, width = shape
    crops = [np.asarray(Image.fromarray(photo[top:top + 200, 100:300]).resize((width, height)), np.float32)
             for photo, top in ((data.astronaut(), 0), (data.chelsea(), 20), (data.coffee(), 100), (data.astronaut(), 250))]
    frames = np.stack(crops[:shape[2] if len(shape) == 5 else 1])  # frames, height, width, RGB
    return (frames.transpose(3, 0, 1, 2)[np.newaxis] / 127.5 - 1).reshape(shape).astype(np.float32)


def torch_matches_onnxruntime(model: onnx.ModelProto | Path, x: np.ndarray) -> float:
    """The network onnx2torch rebuilds (with inferd's converters) against ONNX Runtime, on a graph or a package's."""
    import torch

    from inferd.export.from_onnx import to_torch

    if isinstance(model, Path):
        model = onnx.load(model / "model.onnx")
    (reference,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    rebuilt = to_torch(model)[0]
    with torch.inference_mode():
        got = rebuilt(torch.from_numpy(x)).numpy()
    assert got.shape == reference.shape
    return float(np.max(np.abs(got - reference)))


def edge_pads_core_ml_refuses(spec: Any) -> list[str]:
    """Reflect and replicate pad ops that pad outside the last two axes: the device would not load the model."""
    constants = {op.outputs[0].name: op.attributes["val"].immediateValue.tensor for op in operations(spec)
                 if op.type == "const"}
    refused = []
    for op in operations(spec):
        if op.type == "pad":
            mode = constants[op.inputs["mode"].arguments[0].name].strings.values[0]
            pads = list(constants[op.inputs["pad"].arguments[0].name].ints.values)
            if mode != "constant" and any(pads[:-4]):
                refused.append(f"{op.outputs[0].name}: {mode} {pads}")
    return refused


def test_conv_net_ending_in_global_max_pool(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
         helper.make_node("GlobalMaxPool", ["c2"], ["pooled"], name="global_max"),
         helper.make_node("Flatten", ["pooled"], ["features"], name="flatten"),
         helper.make_node("Gemm", ["features", "w3", "b3"], ["logits"], name="classify", transB=1)],
        {"x": (1, 3, 32, 32)}, {"logits": (1, 5)},
        {"w1": rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.3, "b1": np.full(16, 0.1, np.float32),
         "w2": rng.standard_normal((64, 16, 3, 3)).astype(np.float32) * 0.1,
         "w3": rng.standard_normal((5, 64)).astype(np.float32), "b3": np.zeros(5, np.float32)})
    package = save_package(model, tmp_path, "max-pooled", inputs=[ImageType(name="x", shape=(1, 3, 32, 32),
                                                                             scale=1 / 127.5, bias=(-1.0,))])
    result = to_coreml(package, tmp_path / "python.mlpackage", precision="fp32")
    assert result.source == "onnx2torch from model.onnx" and result.max_abs_diff_vs_package < 1e-4
    assert op_counts(spec_of(result.path))["reduce_max"] == 1
    assert torch_matches_onnxruntime(package, photo_batch((1, 3, 32, 32))) < 1e-5

    cli = CliRunner().invoke(app, ["export", "coreml", str(package), "-o", str(tmp_path / "cli.mlpackage")],
                             env={"COLUMNS": "200"})
    assert cli.exit_code == 0, cli.output
    assert "onnx2torch" in cli.stdout
    assert spec_of(tmp_path / "cli.mlpackage").description.input[0].type.imageType.width == 32


# [begin..., end...] over (batch, channels, frames, height, width); the first pads channels, which torch's reflect
# pad refuses, the second the last three axes, which Core ML's runtime refuses in reflect or edge mode.
CHANNELS_AND_SPACE = [0, 1, 1, 2, 2, 0, 2, 1, 2, 2]
LAST_THREE = [0, 0, 1, 2, 3, 0, 0, 2, 1, 3]


@pytest.mark.parametrize(("mode", "pads", "opset"), [
    ("reflect", CHANNELS_AND_SPACE, 13),
    ("edge", CHANNELS_AND_SPACE, 13),
    ("reflect", LAST_THREE, 13),
    ("reflect", LAST_THREE, 18),  # opset 18's Pad takes the axes to pad, and onnx cannot convert it to 17
])
def test_5d_pad_exports_in_ops_core_ml_runs(tmp_path: Path, mode: str, pads: list[int], opset: int) -> None:
    out = tuple(size + before + after for size, before, after in zip(VIDEO, pads[:5], pads[5:], strict=True))
    if opset >= 18:
        axes = [axis for axis in range(5) if pads[axis] or pads[axis + 5]]
        amounts = [pads[a] for a in axes] + [pads[a + 5] for a in axes]
        pad = helper.make_node("Pad", ["x", "pads", "", "axes"], ["padded"], name="pad_video", mode=mode)
        constants = {"pads": np.array(amounts, np.int64), "axes": np.array(axes, np.int64)}
    else:
        pad = helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad_video", mode=mode)
        constants = {"pads": np.array(pads, np.int64)}
    model = graph([pad, helper.make_node("Tanh", ["padded"], ["y"], name="squash")], {"x": VIDEO}, {"y": out},
                  constants, opset)
    package = save_package(model, tmp_path, f"pad-{mode}")
    target = tmp_path / "pad.mlpackage"
    result = CliRunner().invoke(app, ["export", "coreml", str(package), "-o", str(target)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    spec = spec_of(target)
    assert edge_pads_core_ml_refuses(spec) == []
    assert op_counts(spec)["reverse" if mode == "reflect" else "tile"] > 0
    assert list(spec.description.output[0].type.multiArrayType.shape) == list(out)
    assert torch_matches_onnxruntime(package, photo_batch(VIDEO)) < 1e-6


def _int64(values: list[int]) -> np.ndarray:
    return np.array(values, np.int64)


@pytest.mark.parametrize(("opset", "inputs", "attributes", "constants", "out"), [
    # a constant value, and negative amounts, which crop
    (13, ["x", "pads", "value"], {}, {"pads": _int64([0, 1, -2, 3, 0, 0, 4, -1]),
                                      "value": np.array(0.5, np.float32)}, (1, 4, 26, 26)),
    (13, ["x", "pads"], {"mode": "edge"}, {"pads": _int64([0, -1, 2, -3, 0, 0, -1, 3])}, (1, 2, 25, 24)),
    (10, ["x"], {"mode": "reflect", "pads": [0, 0, 3, 1, 0, 0, 2, 5]}, {}, (1, 3, 29, 30)),  # amounts as attribute
    (18, ["x", "pads", "", "axes"], {"mode": "reflect"}, {"pads": _int64([2, 1, 3, 2]), "axes": _int64([-1, 1])},
     (1, 6, 24, 29)),
])
def test_pad_forms_match_onnxruntime(opset: int, inputs: list[str], attributes: dict[str, Any],
                                     constants: dict[str, np.ndarray], out: tuple[int, ...]) -> None:
    model = graph([helper.make_node("Pad", inputs, ["y"], name="pad", **attributes)], {"x": (1, 3, 24, 24)},
                  {"y": out}, constants, opset)
    assert torch_matches_onnxruntime(model, photo_batch((1, 3, 24, 24))) == 0.0


def test_pytorch_network_with_pads(tmp_path: Path) -> None:
    """inferd's PyTorch converter writes opset 18; a 3-D reflect pad exported from the module itself is refused."""
    import torch

    class Padded(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.nn.functional.pad(x, (1, 1, 2, 2, 1, 1), mode="reflect")
            return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 1, 1), value=0.5).mean((2, 3, 4))

    package = inferd.convert(Padded(), inputs=[TensorType(name="x", shape=VIDEO)])
    result = to_coreml(package, tmp_path / "onnx.mlpackage", source="onnx")
    assert result.max_abs_diff_vs_package < 1e-3 and edge_pads_core_ml_refuses(spec_of(result.path)) == []
    with pytest.raises(UnsupportedOperation, match=r"pads axes \[-3\] .* in reflect mode, and Core ML's runtime pads "
                                                   r"only the last two axes.*source='onnx'"):
        to_coreml(package, tmp_path / "module.mlpackage", source=Padded())
    assert not (tmp_path / "module.mlpackage").exists()


def _selu() -> onnx.ModelProto:  # onnx2torch's converter refuses any alpha but torch's
    return graph([helper.make_node("Selu", ["x"], ["y"], name="odd_selu", alpha=1.5)],
                 {"x": (1, 3, 16, 16)}, {"y": (1, 3, 16, 16)})


def _resize(scales: list[float], out: tuple[int, ...], **attributes: Any) -> onnx.ModelProto:
    return graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                  helper.make_node("Resize", ["r", "", "scales"], ["y"], name="upsample", mode="nearest", **attributes)],
                 {"x": (1, 3, 16, 16)}, {"y": out}, {"scales": np.array(scales, np.float32)})


def _dilated_max_pool() -> onnx.ModelProto:  # coremltools' max_pool takes no dilation
    return graph([helper.make_node("MaxPool", ["x"], ["y"], name="dilated_pool", kernel_shape=[3, 3], dilations=[2, 2])],
                 {"x": (1, 3, 16, 16)}, {"y": (1, 3, 12, 12)})


@pytest.mark.parametrize(("build", "message"), [
    (_selu, r"onnx2torch .* cannot convert node 'odd_selu' \(Selu\) to PyTorch: alpha parameter must be"),
    # onnx2torch's Resize fails when it runs: torch's interpolate cannot scale channels
    (lambda: _resize([1, 2, 2, 2], (1, 6, 32, 32)),
     r"failed while running .* at node 'upsample' \(Resize\): NotImplementedError: .*cannot scale channel"),
    # onnx2torch's Resize always rounds down: nearest_mode "ceil" picks other pixels
    (lambda: _resize([1, 1, 2, 2], (1, 3, 32, 32), nearest_mode="ceil"),
     r"computes differently from ONNX Runtime .*, first at node 'upsample' \(Resize\)"),
    (_dilated_max_pool, r"coremltools .* at %\w+ = aten::max_pool2d from ONNX node 'dilated_pool' \(MaxPool\): "
                        r"ValueError: .*dilation"),
])
def test_failures_name_the_onnx_node(tmp_path: Path, build: Any, message: str) -> None:
    package = save_package(build(), tmp_path, "failing")
    with pytest.raises(ExportError, match=message) as raised:
        to_coreml(package, tmp_path / "x.mlpackage")
    assert "re-export the ONNX model without the op" in str(raised.value)
    assert not (tmp_path / "x.mlpackage").exists()


def test_cli_failure_is_one_line_naming_the_node(tmp_path: Path) -> None:
    package = save_package(_resize([1, 2, 2, 2], (1, 6, 32, 32)), tmp_path, "failing")
    cli = inferd_cli("export", "coreml", str(package), "-o", str(tmp_path / "x.mlpackage"))
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
    assert "error: onnx2torch from model.onnx failed while running on the package's example inputs at node 'upsample' " \
           "(Resize)" in " ".join(cli.stderr.split())


PPOCR_CLS = ["--image", "--input-shape", "1,3,48,192", "--color-layout", "BGR", "--scale", repr(1 / 127.5),
             "--bias", "-1.0", "--resize", "stretch"]


@pytest.mark.slow
def test_zoo_models_export(tmp_path: Path) -> None:
    """Two ONNX-only packages of real models: PP-OCR's direction classifier and BlazeFace, whose TFLite graph pads
    channels (a constant Pad on axis 1, which now goes through inferd's own Pad converter)."""
    runner = CliRunner()
    converted = runner.invoke(app, ["convert", str(zoo_file("text-cls")), "-o", str(tmp_path / "direction"), *PPOCR_CLS])
    assert converted.exit_code == 0, converted.output
    exported = runner.invoke(app, ["export", "coreml", str(tmp_path / "direction"), "-o", str(tmp_path / "d.mlpackage")],
                             env={"COLUMNS": "200"})
    assert exported.exit_code == 0, exported.output
    image = spec_of(tmp_path / "d.mlpackage").description.input[0].type.imageType
    assert (image.width, image.height, image.colorSpace) == (192, 48, image.BGR)

    face = inferd.convert(zoo_file("tflite-face"))
    assert any(node.op_type == "Pad" for node in face.onnx_model.graph.node)
    result = to_coreml(face, tmp_path / "face.mlpackage", precision="fp32")
    assert result.source == "onnx2torch from model.onnx" and result.max_abs_diff_vs_package < 1e-4
    assert edge_pads_core_ml_refuses(spec_of(result.path)) == []
