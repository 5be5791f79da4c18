"""What a graph's inputs and outputs are, and the user's description of them laid over it.

An ONNX, TensorFlow or TFLite model already declares its input names, shapes and
types; what it cannot say is that a float tensor is a picture, and how pixels map
onto it. `ImagePreprocessing` says only that part, so users need not restate a
shape the model already knows (Core ML's `ImageType` without a shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inferd.errors import ConversionError
from inferd.types import ImageType, TensorType

ChannelLayout = Literal["NCHW", "NHWC"]
Spec = ImageType | TensorType
"""The input specs a graph has: text inputs are a PyTorch-converter notion (token tensors), not a graph's."""


class ImagePreprocessing(BaseModel):
    """Which input is an image and how a picture becomes that tensor: `pixel * scale + bias`, pixels in 0..255.

    `input` may be left out when the model has exactly one 4-D float input;
    `channel_layout` may be left out when the shape tells (a 1- or 3-sized axis 1
    or 3), and otherwise defaults to the source framework's own layout.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: str | None = None
    scale: float | tuple[float, ...] = 1.0
    bias: tuple[float, ...] = (0.0,)
    color_layout: Literal["RGB", "BGR", "GRAY"] = "RGB"
    channel_layout: ChannelLayout | None = None
    resize: Literal["center_crop", "stretch"] = "center_crop"
    crop_fraction: float = Field(0.875, gt=0.0, le=1.0)


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> list[TensorType]:
    """Specs of graph inputs or outputs; every dimension that is not a fixed size becomes -1."""
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ConversionError(f"{value.name!r} is not a tensor (sequences and maps are not supported); "
                                  "change the model to take and return plain tensors")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor.shape.dim)
        specs.append(TensorType(name=value.name, shape=dims, dtype=dtype_name(tensor.elem_type, value.name)))
    return specs


def graph_inputs(model: onnx.ModelProto) -> list[TensorType]:
    initializers = {init.name for init in model.graph.initializer}
    return tensor_specs([value for value in model.graph.input if value.name not in initializers])


def dtype_name(elem_type: int, name: str) -> Any:
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    if elem_type == onnx.TensorProto.BFLOAT16:
        return "bfloat16"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError):
        raise ConversionError(
            f"{name!r} has ONNX element type {onnx.TensorProto.DataType.Name(elem_type)}, which inferd cannot feed"
        ) from None


def resolve_inputs(
    derived: Sequence[TensorType],
    *,
    inputs: Sequence[Spec] | None = None,
    image: ImagePreprocessing | None = None,
    input_shape: Sequence[int] | None = None,
    default_layout: ChannelLayout = "NCHW",
) -> list[Spec]:
    """The package's input specs: the model's own, with `input_shape`, explicit `inputs` and `image` applied."""
    by_name: dict[str, Spec] = {spec.name: spec for spec in derived}
    names = list(by_name)
    if input_shape is not None:
        target = image.input if image and image.input else _only_input(derived, "input_shape")
        by_name[target] = _with_shape(by_name[target], tuple(input_shape))
    for spec in inputs or ():
        if spec.name not in by_name:
            raise ConversionError(f"the model has no input {spec.name!r}; its inputs are {names}")
        _check_compatible(by_name[spec.name], spec)
        by_name[spec.name] = spec
    if image is not None:
        target = image.input or _only_image_candidate(list(by_name.values()))
        if target not in by_name:
            raise ConversionError(f"the model has no input {target!r}; its inputs are {names}")
        by_name[target] = _as_image(by_name[target], image, default_layout)
    return [by_name[name] for name in names]


def _only_input(derived: Sequence[TensorType], what: str) -> str:
    if len(derived) != 1:
        raise ConversionError(f"{what} needs a model with one input; this one has {[s.name for s in derived]}")
    return derived[0].name


def _only_image_candidate(specs: Sequence[Spec]) -> str:
    candidates = [s.name for s in specs if len(s.shape) == 4 and s.dtype == "float32"]
    if len(candidates) != 1:
        raise ConversionError(
            f"cannot tell which input is the image: 4-D float32 inputs are {candidates} among "
            f"{[f'{s.name} {s.dtype} {list(s.shape)}' for s in specs]}; name it (--image-input NAME)"
        )
    return candidates[0]


def _with_shape(spec: Spec, shape: tuple[int, ...]) -> Spec:
    if any(size < 1 and size != -1 for size in shape):
        raise ConversionError(f"input_shape {list(shape)} needs positive sizes (or -1 for the batch)")
    if len(shape) != len(spec.shape):
        raise ConversionError(
            f"input_shape {list(shape)} has {len(shape)} dimensions; input {spec.name!r} has {len(spec.shape)} "
            f"(shape {list(spec.shape)})"
        )
    for axis, (given, declared) in enumerate(zip(shape, spec.shape, strict=True)):
        if axis > 0 and declared > 0 and given != declared:
            raise ConversionError(
                f"input_shape {list(shape)} disagrees with input {spec.name!r}, whose dimension {axis} is fixed "
                f"at {declared} (shape {list(spec.shape)})"
            )
    return spec.model_copy(update={"shape": (spec.shape[0], *shape[1:])})


def _check_compatible(declared: Spec, given: Spec) -> None:
    if given.dtype != declared.dtype or len(given.shape) != len(declared.shape):
        raise ConversionError(
            f"input {given.name!r} is {declared.dtype} {list(declared.shape)} in the model; "
            f"the spec given says {given.dtype} {list(given.shape)}"
        )
    _with_shape(declared, given.shape)


def _as_image(spec: Spec, image: ImagePreprocessing, default_layout: ChannelLayout) -> ImageType:
    if len(spec.shape) != 4 or spec.dtype != "float32":
        raise ConversionError(
            f"input {spec.name!r} is {spec.dtype} {list(spec.shape)}; an image input must be a 4-D float32 tensor"
        )
    layout = image.channel_layout or _layout_from_shape(spec.shape, default_layout)
    spatial = spec.shape[2:] if layout == "NCHW" else spec.shape[1:3]
    if min(spatial) < 1:
        raise ConversionError(
            f"image input {spec.name!r} has a dynamic height or width (shape {list(spec.shape)}, {layout}); "
            "give the size the model was trained at with input_shape (--input-shape), e.g. 1,224,224,3 for NHWC"
        )
    try:
        return ImageType(
            name=spec.name, shape=spec.shape, scale=image.scale, bias=image.bias, color_layout=image.color_layout,
            channel_layout=layout, resize=image.resize, crop_fraction=image.crop_fraction,
        )
    except ValidationError as exc:
        raise ConversionError("; ".join(str(error["msg"]) for error in exc.errors())) from None


def _layout_from_shape(shape: tuple[int, ...], default: ChannelLayout) -> ChannelLayout:
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first != last:
        return "NCHW" if first else "NHWC"
    return default
