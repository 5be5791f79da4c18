"""ONNX files in, checked packages out: real digit classifiers exported at batch 1, old and new opsets, bad ops."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import inferd
from inferd.convert import ImagePreprocessing, convert_onnx
from inferd.errors import ConversionError
from inferd.io import preprocess_image
from inferd.types import ImageType
from tests.convert_models import LABELS, as_pixels, held_out, train_torch_cnn, train_torch_mlp

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter announces its retirement

DIGIT = ImagePreprocessing(scale=1 / 255, color_layout="GRAY", resize="stretch")


def export(model: Any, example: Any, opset: int, **options: Any) -> onnx.ModelProto:
    """The legacy exporter at batch 1 and without constant folding: what many ONNX files in the wild look like."""
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, dynamo=False, input_names=["x"], output_names=["logits"],
                      opset_version=opset, do_constant_folding=False, **options)
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def cnn() -> Any:
    return train_torch_cnn()


@pytest.fixture(scope="module")
def cnn_file(cnn: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    onnx.save(export(cnn, torch.zeros(1, 1, 8, 8), 13), path)
    return path


def digit_samples(count: int = 32) -> list[dict[str, np.ndarray]]:
    images, _ = held_out(count)
    return [{"x": image[None]} for image in images]


def torch_logits(model: Any, batch: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(row[None])).numpy() for row in batch])


def test_onnx_file_becomes_a_checked_package(cnn: Any, cnn_file: Path, tmp_path: Path) -> None:
    package = convert_onnx(cnn_file, image=DIGIT, classifier_labels=LABELS, sample_inputs=digit_samples(),
                           metadata={"name": "digits", "author": "tests"})
    manifest = package.manifest
    fidelity = manifest.fidelity
    assert fidelity is not None and fidelity.passed and fidelity.samples == 32
    assert fidelity.max_abs_diff <= 1e-4 and fidelity.top1_agreement == 1.0
    assert fidelity.reference.startswith("original ONNX file in onnxruntime")
    assert manifest.source.framework.startswith("onnx (from pytorch")
    spec = manifest.inputs[0]
    assert isinstance(spec, ImageType)
    assert (spec.shape, spec.channel_layout, spec.color_layout) == ((-1, 1, 8, 8), "NCHW", "GRAY")
    assert manifest.classifier is not None and manifest.classifier.output == "logits"
    assert manifest.classifier.activation == "softmax"
    graph = package.onnx_model.graph
    assert [value.type.tensor_type.shape.dim[0].dim_param for value in [*graph.input, *graph.output]] == ["batch"] * 2
    # onnxslim folded the batch norm into the convolution and dropped the exporter's Identity nodes
    assert len(graph.node) < len(onnx.load(cnn_file).graph.node)

    saved = package.save(tmp_path / "digits")
    assert saved.path is not None
    model = inferd.load(saved.path, precision="fp32")
    images, labels = held_out(64)
    tensors = np.stack([preprocess_image(Image.fromarray(as_pixels(image)), spec) for image in images])
    assert np.abs(tensors[:, 0] - images).max() <= 0.51 / 255 # the picture laid out as the model was trained
    logits = model.predict({"x": tensors})["logits"]
    assert np.abs(logits - torch_logits(cnn, tensors)).max() <= 1e-4
    assert np.mean(logits.argmax(1) == labels) >= 0.8  # a trained classifier, so agreement above is meaningful


def test_batch_fixed_by_the_graph_stays_fixed(tmp_path: Path) -> None:
    """A graph that reshapes with a hard-coded 1 cannot take a batch of 2; the package keeps batch 1, honestly."""
    model = train_torch_cnn(batch_fixed_reshape=True)
    path = tmp_path / "fixed.onnx"
    onnx.save(export(model, torch.zeros(1, 1, 8, 8), 13), path)
    package = convert_onnx(path, image=DIGIT, sample_inputs=digit_samples(8))
    assert not package.manifest.batch_dynamic
    assert package.manifest.inputs[0].shape == (1, 1, 8, 8)
    assert package.manifest.fidelity is not None and package.manifest.fidelity.max_abs_diff <= 1e-4
    saved = package.save(tmp_path / "fixed")
    assert saved.path is not None
    images, _ = held_out(8)
    compiled = inferd.load(saved.path, precision="fp32")
    got = np.concatenate([compiled.predict({"x": image[None, None]})["logits"] for image in images])
    assert np.abs(got - torch_logits(model, images[:, None])).max() <= 1e-4


def test_opset_too_old_for_runtimes_is_upgraded_and_checked_with_the_spec_evaluator(tmp_path: Path) -> None:
    """An opset-6 file (Add with the pre-7 broadcast attribute) that ONNX Runtime has no kernels for."""
    mlp = train_torch_mlp()
    weights = [numpy_helper.from_array(p.detach().numpy().T.copy() if p.ndim == 2 else p.detach().numpy(), name)
               for p, name in zip(mlp.parameters(), ["w1", "b1", "w2", "b2"], strict=True)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="dense1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1", broadcast=1),
        helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="dense2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="bias2", broadcast=1),
    ]
    # IR 3 lists weights among the graph inputs too
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])] + [
        helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in weights]
    graph = helper.make_graph(nodes, "mlp", inputs, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              weights)
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    old.ir_version = 3
    path = tmp_path / "old.onnx"
    onnx.save(old, path)
    images, _ = held_out(16)
    rows = images.reshape(16, 64)
    package = convert_onnx(path, sample_inputs=[{"x": row} for row in rows], classifier_labels=LABELS)
    fidelity = package.manifest.fidelity
    assert fidelity is not None and fidelity.passed and fidelity.max_abs_diff <= 1e-4
    assert "onnx.reference" in fidelity.reference  # ORT could not open the original
    assert [o.version for o in package.onnx_model.opset_import if o.domain == ""] == [13]
    assert package.manifest.batch_dynamic
    with torch.inference_mode():
        expected = mlp(torch.from_numpy(rows)).numpy()
    saved = package.save(tmp_path / "old-pkg")
    assert saved.path is not None
    got = inferd.load(saved.path, precision="fp32").predict({"x": rows})["logits"]
    assert np.abs(got - expected).max() <= 1e-4


def test_opset_and_ir_too_new_are_lowered(cnn_file: Path) -> None:
    new = onnx.version_converter.convert_version(onnx.load(cnn_file), 23)
    new.ir_version = 11
    package = convert_onnx(new, image=DIGIT, sample_inputs=digit_samples(8))
    model = package.onnx_model
    assert [o.version for o in model.opset_import if o.domain == ""] == [21]
    assert model.ir_version <= 10
    assert package.manifest.fidelity is not None and package.manifest.fidelity.max_abs_diff <= 1e-4


def test_input_shape_fixes_an_open_image_size(cnn: Any, tmp_path: Path) -> None:
    class FullyConvolutional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Sequential(cnn.conv, cnn.norm, torch.nn.ReLU())
            self.head = torch.nn.Conv2d(8, 10, 1)

        def forward(self, x: Any) -> Any:
            return self.head(self.features(x)).mean((2, 3))

    path = tmp_path / "open.onnx"
    onnx.save(export(FullyConvolutional().eval(), torch.zeros(1, 1, 8, 8), 17,
                     dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}}), path)
    with pytest.raises(ConversionError, match=r"dynamic height or width.*--input-shape"):
        convert_onnx(path, image=DIGIT)
    package = convert_onnx(path, image=DIGIT, input_shape=(1, 1, 8, 8), sample_inputs=digit_samples(8))
    assert package.manifest.inputs[0].shape == (-1, 1, 8, 8)
    dims = package.onnx_model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 1, 8, 8]


def one_node_model(node: onnx.NodeProto, elem_type: int, inputs: int, domains: dict[str, int]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(f"x{i}", elem_type, ["n", 4]) for i in range(inputs)],
        [helper.make_tensor_value_info("y", elem_type, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in domains.items()])
    model.ir_version = 8
    return model


def test_custom_domain_op_is_named_with_its_node() -> None:
    node = helper.make_node("FancyNorm", ["x0"], ["y"], name="block3/fancy_norm", domain="com.example")
    model = one_node_model(node, TensorProto.FLOAT, 1, {"": 17, "com.example": 1})
    with pytest.raises(ConversionError, match=r"com\.example\.FancyNorm \(node 'block3/fancy_norm'\).*re-export"):
        convert_onnx(model)


def test_op_without_a_runtime_kernel_is_named_with_its_node() -> None:
    """Max on int16 is valid ONNX, but ONNX Runtime has no kernel for it."""
    node = helper.make_node("Max", ["x0", "x1"], ["y"], name="clip_counts")
    model = one_node_model(node, TensorProto.INT16, 2, {"": 17})
    with pytest.raises(ConversionError, match=r"no kernel for op Max \(opset 13\).*'clip_counts'.*--opset"):
        convert_onnx(model)


def test_files_that_are_not_onnx(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("these are not the weights you are looking for\n" * 20)
    with pytest.raises(ConversionError, match="is not an ONNX model"):
        convert_onnx(text)
    with pytest.raises(ConversionError, match="no ONNX file"):
        convert_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ConversionError, match=r"opset 30 is outside"):
        convert_onnx(onnx.load(_tiny(tmp_path)), opset=30)


def _tiny(tmp_path: Path) -> Path:
    node = helper.make_node("Relu", ["x0"], ["y"], name="relu")
    path = tmp_path / "tiny.onnx"
    onnx.save(one_node_model(node, TensorProto.FLOAT, 1, {"": 17}), path)
    return path
