"""One entry point for every source: a model object or a file, converted by the module for its framework.

`convert_any` takes a path and a `ConvertOptions`, the serialisable form of the
options that the command line, `inferd.load` and the conversion cache share (the
cache key is the source's bytes plus these options); `convert` takes a model
object or a path with the converter's own keyword arguments, for Python users.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from inferd.convert.detect import SourceKind, detect_source
from inferd.convert.inputs import ImagePreprocessing
from inferd.convert.onnx import convert_onnx
from inferd.convert.prepare import Progress, no_progress
from inferd.convert.samples import load_samples_file
from inferd.errors import ConversionError
from inferd.io.classify import Activation
from inferd.package import ModelPackage


class ConvertOptions(BaseModel):
    """What the user says about a model file beyond the file itself; every field has a command-line flag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: ImagePreprocessing | None = Field(None, description="treat an input as an image (--image and friends)")
    input_shape: tuple[int, ...] | None = Field(None, description="fix open dimensions; required for TorchScript")
    labels: tuple[str, ...] | None = Field(None, description="class names, one per score of the classifier output")
    activation: Activation | None = Field(
        None, description="what turns the classifier's scores into probabilities (--activation); "
                          "'none' when they already are; default: detected from the graph and its outputs")
    metadata: dict[str, str] = Field(default_factory=dict, description="name, version, author, license, description")
    opset: int | None = Field(None, description="target ONNX opset (ONNX and TensorFlow sources)")
    signature: str = Field("serving_default", description="SavedModel signature to convert")
    simplify: bool = True
    tolerance: float = Field(1e-3, gt=0)
    allow_fidelity_loss: bool = False
    allow_pickle: bool = Field(False, description="unpickle scikit-learn files (runs code from the file)")
    samples: str | None = Field(None, description="an .npz of typical inputs keyed by input name, batch first, kept "
                                                  "in the package so AUTO can measure reduced precisions on them")

    @field_validator("input_shape")
    @classmethod
    def _sizes(cls, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if shape is not None and (not shape or min(shape) < 1):
            raise ValueError(f"input shape {list(shape)} needs positive sizes, batch first, e.g. 1,3,224,224")
        return shape


def convert_any(
    source: str | os.PathLike[str], options: ConvertOptions | None = None, *, progress: Progress = no_progress
) -> ModelPackage:
    """Convert the model file or directory at `source`; a package directory is an error here (nothing to convert)."""
    options = options or ConvertOptions()
    package = _convert_file(source, options, progress)
    if options.samples is None:
        return package
    return package.with_samples(load_samples_file(Path(options.samples), package.manifest.graph_inputs))


def _convert_file(source: str | os.PathLike[str], options: ConvertOptions, progress: Progress) -> ModelPackage:
    kind = detect_source(source)
    if kind is SourceKind.PACKAGE:
        raise ConversionError(f"{source} is already a model package; load it, or convert its source model instead")
    _refuse_inapplicable(kind, options)
    labels = list(options.labels) if options.labels else None
    common: dict[str, Any] = {
        "classifier_labels": labels, "activation": options.activation, "metadata": options.metadata or None,
        "tolerance": options.tolerance, "allow_fidelity_loss": options.allow_fidelity_loss,
    }
    if kind is SourceKind.SKLEARN_PICKLE:
        from inferd.convert.sklearn import convert_sklearn, load_pickled_estimator

        estimator = load_pickled_estimator(source, allow_pickle=options.allow_pickle)
        return convert_sklearn(estimator, progress=progress, **common)
    if kind is SourceKind.TORCHSCRIPT:
        from inferd.convert.torchscript import convert_torchscript

        progress("exporting TorchScript to ONNX")
        return convert_torchscript(source, input_shape=options.input_shape, image=options.image, **common)
    graph_options: dict[str, Any] = {
        **common, "image": options.image, "input_shape": options.input_shape, "opset": options.opset,
        "simplify": options.simplify, "progress": progress,
    }
    if kind is SourceKind.ONNX:
        return convert_onnx(source, **graph_options)
    from inferd.convert.tensorflow import convert_tensorflow

    return convert_tensorflow(source, signature=options.signature, **graph_options)


def convert(model: Any, **kwargs: Any) -> ModelPackage:
    """Convert a model object (PyTorch module, Keras model, scikit-learn estimator, ONNX ModelProto) or a file.

    Keyword arguments are those of the converter for the model's framework
    (`convert_pytorch`, `convert_tensorflow`, `convert_sklearn`, `convert_onnx`,
    `convert_torchscript`).
    """
    if isinstance(model, (str, os.PathLike)):
        return _convert_path(Path(model), kwargs)
    if isinstance(model, onnx.ModelProto):
        return convert_onnx(model, **kwargs)
    framework = _framework(model)
    if framework == "torch":
        from inferd.convert.pytorch import convert_pytorch

        return convert_pytorch(model, **kwargs)
    if framework in ("keras", "tf_keras", "tensorflow"):
        from inferd.convert.tensorflow import convert_tensorflow

        return convert_tensorflow(model, **kwargs)
    if framework == "sklearn":
        from inferd.convert.sklearn import convert_sklearn

        return convert_sklearn(model, **kwargs)
    raise ConversionError(
        f"inferd cannot convert a {type(model).__module__}.{type(model).__name__}; give a PyTorch module, a Keras "
        "model, a scikit-learn estimator, an onnx.ModelProto, or a model file"
    )


def _convert_path(path: Path, kwargs: dict[str, Any]) -> ModelPackage:
    kind = detect_source(path)
    if kind is SourceKind.PACKAGE:
        raise ConversionError(f"{path} is already a model package; load it with inferd.load")
    if kind is SourceKind.ONNX:
        return convert_onnx(path, **kwargs)
    if kind is SourceKind.TORCHSCRIPT:
        from inferd.convert.torchscript import convert_torchscript

        return convert_torchscript(path, **kwargs)
    if kind is SourceKind.SKLEARN_PICKLE:
        from inferd.convert.sklearn import convert_sklearn, load_pickled_estimator

        estimator = load_pickled_estimator(path, allow_pickle=kwargs.pop("allow_pickle", False))
        return convert_sklearn(estimator, **kwargs)
    from inferd.convert.tensorflow import convert_tensorflow

    return convert_tensorflow(path, **kwargs)


def _framework(model: Any) -> str:
    """The library a model's class (or a base class, for user subclasses) comes from."""
    known = ("torch", "keras", "tf_keras", "tensorflow", "sklearn")
    for cls in type(model).__mro__:
        package = cls.__module__.split(".")[0]
        if package in known:
            return package
    return ""


def _refuse_inapplicable(kind: SourceKind, options: ConvertOptions) -> None:
    """An option that would be silently ignored for this kind of source is an error instead."""
    ignored = []
    if kind is SourceKind.SKLEARN_PICKLE:
        ignored += [flag for flag, value in (("--image", options.image), ("--input-shape", options.input_shape),
                                             ("--opset", options.opset)) if value is not None]
    if kind is SourceKind.TORCHSCRIPT and options.opset is not None:
        ignored.append("--opset")
    if kind not in (SourceKind.SAVED_MODEL,) and options.signature != "serving_default":
        ignored.append("--signature")
    if ignored:
        raise ConversionError(f"{', '.join(ignored)} does not apply to a {kind.value} source; leave it out")
