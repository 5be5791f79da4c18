"""ModelPackage → Core ML `.mlpackage` (an ML program), for apps on Apple devices.

The names follow coremltools (`minimum_deployment_target`, `ImageType`,
`ClassifierConfig`) so its users recognise them. What the package's manifest
knows travels into the Core ML model: the image input's scale, bias and colour
layout become a Core ML ImageType (so an app passes a CVPixelBuffer, not a
tensor), the labels a classifier whose probabilities output has them all, and
name, author, licence, description and version the model's metadata.

One thing stays with the app because Core ML has no place for it: resizing and
cropping the picture to the input size (the input's description says how, and
Vision's `imageCropAndScaleOption` does most of it). A per-channel scale, which
Core ML's ImageType cannot hold, is computed inside the model instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inferd.errors import InferdError
from inferd.export import coreml_compress, coreml_limits
from inferd.export.coreml_library import deployment_target, import_coremltools, notes, quiet
from inferd.export.diagnose import advice, coreml_failure, failing_module, failures
from inferd.export.errors import ExportError, first_line
from inferd.export.torch_source import Network, Source, as_tuple, check_equivalent, example_inputs, rebuild
from inferd.manifest import Manifest
from inferd.package import ModelPackage
from inferd.types import ImageType, TensorType

PRECISIONS = ("fp16", "fp32")
WEIGHTS_DIR = Path("Data/com.apple.CoreML/weights")
CLASS_LABEL = "classLabel"  # Core ML's usual name of a classifier's top label; probabilities come as classLabel_probs


@dataclass(frozen=True)
class CoreMLExport:
    """What was written, from what, and how much the compression saved."""

    path: Path
    source: str
    precision: str
    minimum_deployment_target: str
    max_abs_diff_vs_package: float
    weights_bytes_uncompressed: int
    weights_bytes: int
    total_bytes: int
    compression: tuple[str, ...] = field(default=())
    notes: tuple[str, ...] = field(default=())
    """What coremltools reported while compressing, e.g. weights it left uncompressed and why."""

    @property
    def compression_ratio(self) -> float:
        return self.weights_bytes_uncompressed / max(self.weights_bytes, 1)


def to_coreml(
    package: str | os.PathLike[str] | ModelPackage,
    path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    minimum_deployment_target: str = "macOS13",
    compress: str | None = None,
    source: Source | Any = "auto",
    image_inputs: bool = True,
    classifier: bool = True,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CoreMLExport:
    """Write `package` as a Core ML ML program at `path` (a `.mlpackage` directory).

    `precision` is the ML program's compute precision (Core ML's typed
    execution: "fp16", its default and what the Neural Engine runs, or "fp32").
    `compress` applies coremltools.optimize.coreml passes, e.g. "palettize:4",
    "quantize:8", "prune:0.5", "prune:0.5,palettize:4". `source` picks where the
    PyTorch network comes from: the package's inferd factory, or its
    model.onnx through onnx2torch ("auto" prefers the factory), or pass the
    PyTorch module yourself; it is checked against the package either way. With
    `image_inputs=False` images stay float tensors the caller preprocesses, and
    with `classifier=False` the outputs stay raw scores, as inferd's own runtime
    feeds and reads them.
    """
    say = progress or (lambda _: None)
    target = Path(path)
    if target.suffix != ".mlpackage":
        raise ExportError(f"{target}: an ML program is saved as a .mlpackage directory; name it {target.stem}.mlpackage")
    if target.exists() and not overwrite:
        raise ExportError(f"{target} already exists; pass overwrite=True (--force on the command line)")
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: Core ML ML programs compute in {' or '.join(PRECISIONS)}")
    steps = coreml_compress.parse(compress) if compress else []
    if isinstance(source, str) and source not in ("auto", "factory", "onnx"):
        raise ExportError(f"source {source!r}: choose auto, factory or onnx")
    ct = import_coremltools()
    deployment = deployment_target(ct, minimum_deployment_target)
    coreml_compress.check_target(steps, minimum_deployment_target, deployment >= ct.target.iOS18)
    pkg = package if isinstance(package, ModelPackage) else ModelPackage.load(package)
    manifest = pkg.manifest
    _check_inputs(manifest)
    as_classifier = classifier and manifest.classifier is not None
    if as_classifier and len(manifest.outputs) > 1:
        raise ExportError(f"{manifest.name} has {len(manifest.outputs)} outputs and a Core ML classifier has one; "
                          "pass classifier=False (--no-classifier) to export every output as a tensor")

    order = _graph_inputs(pkg)
    say("rebuilding the network in PyTorch")
    network = rebuild(pkg, source)
    say("checking it against the package")
    with failures(network, "running on the package's example inputs"):
        max_diff = check_equivalent(network, pkg, order)
    say("capturing the PyTorch graph")
    facing = _core_ml_facing(network.module, pkg, order, image_inputs, as_classifier)
    captured = _capture(network, facing, _example(pkg, order, image_inputs))
    say(f"converting to a Core ML ML program ({precision}, {minimum_deployment_target})")
    with quiet():
        try:
            mlmodel = ct.convert(
                captured,
                inputs=[_coreml_input(ct, pkg, name, image_inputs) for name in order],
                outputs=None if as_classifier else [
                    ct.TensorType(name=spec.name, dtype=np.dtype(spec.dtype).type) for spec in _graph_outputs(pkg)],
                classifier_config=(ct.ClassifierConfig(list(manifest.classifier.labels), predicted_feature_name=CLASS_LABEL)
                                   if as_classifier and manifest.classifier else None),
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                minimum_deployment_target=deployment,
                skip_model_load=True,
            )
        except Exception as exc:  # an op coremltools lacks, or a conversion it gets wrong on this graph
            raise coreml_failure(exc, captured, network, ct.__version__) from exc
    coreml_limits.check(mlmodel.get_spec(), from_onnx=bool(network.nodes))
    _describe(mlmodel, pkg, network, image_inputs)

    warned: list[str] = []
    with (failures(network, f"writing {target}"),
          tempfile.TemporaryDirectory(prefix=".inferd-coreml-", dir=_parent(target)) as staging):
        uncompressed = Path(staging) / "uncompressed.mlpackage"
        if steps:
            _save(mlmodel, uncompressed)
            say(f"compressing: {', '.join(map(str, steps))}")
            with quiet(collect=warned), failures(network, f"compressing ({', '.join(map(str, steps))})"):
                mlmodel = coreml_compress.apply(mlmodel, steps)
            _describe(mlmodel, pkg, network, image_inputs)
        say(f"saving {target}")
        written = Path(staging) / "model.mlpackage"
        _save(mlmodel, written)
        before = weights_bytes(uncompressed if steps else written)
        if target.exists():
            shutil.rmtree(target)
        written.rename(target)
    return CoreMLExport(
        path=target, source=network.origin, precision=precision, minimum_deployment_target=minimum_deployment_target,
        max_abs_diff_vs_package=max_diff, weights_bytes_uncompressed=before, weights_bytes=weights_bytes(target),
        total_bytes=_tree_bytes(target), compression=tuple(map(str, steps)), notes=notes(warned),
    )


def _check_inputs(manifest: Manifest) -> None:
    """Refuse what this export cannot carry rather than write a model that takes other inputs than the package."""
    for spec in manifest.inputs:
        if spec.kind == "text":
            raise ExportError(
                f"{manifest.name}: {spec.name!r} is a text input, tokenized by inferd outside the graph; the Core ML "
                "export takes image and tensor inputs only (an app would need the tokenizer too)"
            )
        if any(d == -1 for d in spec.shape[1:]):
            raise ExportError(
                f"{manifest.name}: input {spec.name!r} has open sizes {list(spec.shape)} and the Core ML export fixes "
                "every size but the batch; convert the model with fixed sizes (--input-shape) and export that"
            )


def weights_bytes(mlpackage: str | os.PathLike[str]) -> int:
    """Bytes of the weight files inside a .mlpackage, the part compression shrinks."""
    return _tree_bytes(Path(mlpackage) / WEIGHTS_DIR)


def _tree_bytes(directory: Path) -> int:
    return sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


def _save(mlmodel: Any, path: Path) -> None:
    with quiet():
        mlmodel.save(str(path))


def _graph_inputs(package: ModelPackage) -> list[str]:
    graph = package.onnx_model.graph
    initializers = {init.name for init in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def _graph_outputs(package: ModelPackage) -> list[TensorType]:
    declared = {spec.name: spec for spec in package.manifest.outputs}
    return [declared[o.name] for o in package.onnx_model.graph.output]


def _coreml_input(ct: Any, package: ModelPackage, name: str, image_inputs: bool) -> Any:
    spec = package.manifest.input(name)
    if isinstance(spec, ImageType) and image_inputs:
        scale, bias = _image_scale_bias(spec)
        layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "GRAY": ct.colorlayout.GRAYSCALE}[spec.color_layout]
        return ct.ImageType(name=name, shape=(1, spec.channels, spec.height, spec.width), scale=scale,
                            bias=bias[0] if spec.color_layout == "GRAY" else bias, color_layout=layout)
    shape = tuple(1 if d == -1 else d for d in spec.shape)
    return ct.TensorType(name=name, shape=shape, dtype=np.dtype(spec.dtype).type)


def _scales_in_model(spec: ImageType) -> bool:
    """Core ML's ImageType has one scale for all channels; a per-channel scale is applied inside the model."""
    return len(set(np.atleast_1d(spec.scale).tolist())) > 1


def _image_scale_bias(spec: ImageType) -> tuple[float, list[float]]:
    """The ImageType's pixel * scale + bias: the package's, or raw pixels when the model scales them itself."""
    if _scales_in_model(spec):
        return 1.0, [0.0] * spec.channels
    bias = np.broadcast_to(np.asarray(spec.bias, dtype=np.float64), (spec.channels,))
    return float(np.atleast_1d(spec.scale)[0]), [float(b) for b in bias]


def _example(package: ModelPackage, order: list[str], image_inputs: bool) -> tuple[Any, ...]:
    """Inputs as the Core ML-facing module receives them: NCHW, after the ImageType's scale and bias for images."""
    import torch

    feeds = example_inputs(package, order)
    examples = []
    for name in order:
        spec = package.manifest.input(name)
        value = feeds[name]
        if isinstance(spec, ImageType) and image_inputs:
            if spec.channel_layout == "NHWC":
                value = value.transpose(0, 3, 1, 2)
            if _scales_in_model(spec):
                value = np.random.default_rng(0).uniform(0, 255, value.shape).astype(np.float32)
        examples.append(torch.from_numpy(np.ascontiguousarray(value)))
    return tuple(examples)


def _core_ml_facing(network: Any, package: ModelPackage, order: list[str], image_inputs: bool, as_classifier: bool) -> Any:
    """The network wrapped with what Core ML's ImageType and classifier cannot express themselves.

    That is a per-channel scale, the NCHW → NHWC transpose (Core ML hands images
    over as NCHW) and the classifier's activation (Core ML's classifier labels
    whatever scores it is given; the package's probabilities are softmax or sigmoid).
    """
    import torch

    adjust: list[tuple[bool, torch.Tensor | None, torch.Tensor | None]] = []
    for name in order:
        spec = package.manifest.input(name)
        if not (isinstance(spec, ImageType) and image_inputs):
            adjust.append((False, None, None))
            continue
        scale = bias = None
        if _scales_in_model(spec):
            scale = torch.tensor(np.broadcast_to(spec.scale, (spec.channels,)), dtype=torch.float32).view(1, -1, 1, 1)
            bias = torch.tensor(np.broadcast_to(spec.bias, (spec.channels,)), dtype=torch.float32).view(1, -1, 1, 1)
        adjust.append((spec.channel_layout == "NHWC", scale, bias))
    activation = package.manifest.classifier.activation if as_classifier and package.manifest.classifier else "none"

    class CoreMLFacing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *inputs: torch.Tensor) -> Any:
            prepared = []
            for value, (to_nhwc, scale, bias) in zip(inputs, adjust, strict=True):
                if scale is not None and bias is not None:
                    value = value * scale + bias
                prepared.append(value.permute(0, 2, 3, 1) if to_nhwc else value)
            outputs = as_tuple(self.network(*prepared))
            if activation == "softmax":
                return torch.softmax(outputs[0], dim=-1)
            if activation == "sigmoid":
                return torch.sigmoid(outputs[0])
            return outputs if len(outputs) > 1 else outputs[0]

    return CoreMLFacing().eval()


def _capture(network: Network, facing: Any, example: tuple[Any, ...]) -> Any:
    """The graph in a form coremltools converts: torch.export where it works, else a TorchScript trace."""
    import torch

    failed = []
    for method in network.capture:
        try:
            with quiet(), torch.inference_mode(False), torch.no_grad():
                if method == "export":
                    return torch.export.export(facing, example).run_decompositions({})
                return torch.jit.trace(facing, example, check_trace=False)
        except InferdError:
            raise
        except Exception as exc:
            where = failing_module(exc, network)
            failed.append(f"{method}{f' at {where}' if where else ''}: {type(exc).__name__}: {first_line(exc)}")
    raise ExportError(f"PyTorch could not capture the graph of {network.origin}: {'; '.join(failed)}; {advice(network)}")


# -- metadata ------------------------------------------------------------------------------------


def _describe(mlmodel: Any, package: ModelPackage, network: Network, image_inputs: bool) -> None:
    manifest = package.manifest
    mlmodel.author = manifest.author
    mlmodel.license = manifest.license
    mlmodel.short_description = manifest.description
    mlmodel.version = manifest.version
    mlmodel.user_defined_metadata["inferd.package"] = f"{manifest.name} {manifest.version}"
    mlmodel.user_defined_metadata["inferd.source"] = network.origin
    for spec in manifest.inputs:
        if isinstance(spec, ImageType) and image_inputs:
            mlmodel.input_description[spec.name] = preprocessing_note(spec)
            mlmodel.user_defined_metadata[f"inferd.preprocessing.{spec.name}"] = preprocessing_note(spec)
    if manifest.classifier is not None and CLASS_LABEL in mlmodel.output_description:
        mlmodel.output_description[CLASS_LABEL] = "the most probable label"
        mlmodel.output_description[f"{CLASS_LABEL}_probs"] = (
            f"{manifest.classifier.activation} probabilities of the {len(manifest.classifier.labels)} labels")


def preprocessing_note(spec: ImageType) -> str:
    """What an app must do before Core ML sees the picture: inferd resizes and crops outside the model."""
    size = f"{spec.width}x{spec.height}"
    if spec.resize == "center_crop":
        shorter = round(min(spec.width, spec.height) / spec.crop_fraction)
        fit = (f"resize the shorter side to {shorter} px, then crop the centre {size} (Vision: crop the centre "
               f"{spec.crop_fraction:g} of the image, then imageCropAndScaleOption = .centerCrop)")
    else:
        fit = f"resize to {size} ignoring the aspect ratio (Vision: imageCropAndScaleOption = .scaleFill)"
    return f"{spec.color_layout} image, 8-bit pixels; scale and bias are applied by the model. Before predicting: {fit}"

