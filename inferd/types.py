"""The user-facing vocabulary, named after Core ML's so its users feel at home.

`ImageType` and `TensorType` describe a model input both when converting (what to
export) and inside a package manifest (how to feed it), so one definition serves
the converter, the preprocessing in `inferd.io` and the server.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DType = Literal[
    "float32", "float16", "bfloat16", "float64",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool", "string",
]


class ComputeUnit(StrEnum):
    """Which compute units a model may run on; `ALL` lets inferd pick by measurement."""

    ALL = "all"
    CPU_ONLY = "cpu_only"
    CPU_AND_GPU = "cpu_and_gpu"
    CPU_AND_NE = "cpu_and_ne"


class Precision(StrEnum):
    """The lowest precision a backend may compute in.

    `AUTO` allows reduced precision where the hardware runs it natively (bf16 on
    AVX512-BF16/AMX CPUs, fp16 on GPUs and NPUs); `FP32` guarantees float32.
    """

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    shape: tuple[int, ...] = Field(description="-1 marks a dynamic dimension (the batch, usually)")

    @field_validator("shape")
    @classmethod
    def _dims_are_sizes(cls, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError(f"shape {shape} has a dimension that is neither positive nor -1 (dynamic)")
        return shape


class TensorType(_Spec):
    """A plain tensor input or output."""

    kind: Literal["tensor"] = "tensor"
    dtype: DType = "float32"


class ImageType(_Spec):
    """An image input: how to turn a decoded picture into the tensor the model expects.

    The tensor is `pixel * scale + bias`, per channel, with pixels in [0, 255], as
    in Core ML's ImageType. `resize="center_crop"` resizes the shorter side to
    `size / crop_fraction` then crops the centre (the usual ImageNet evaluation);
    `"stretch"` resizes straight to the input size.
    """

    kind: Literal["image"] = "image"
    dtype: Literal["float32"] = "float32"
    scale: float | tuple[float, ...] = 1.0
    bias: tuple[float, ...] = (0.0,)
    color_layout: Literal["RGB", "BGR", "GRAY"] = "RGB"
    channel_layout: Literal["NCHW", "NHWC"] = "NCHW"
    resize: Literal["center_crop", "stretch"] = "center_crop"
    crop_fraction: float = Field(0.875, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _consistent(self) -> ImageType:
        if len(self.shape) != 4:
            raise ValueError(f"image input {self.name!r}: shape must have 4 dims (N,C,H,W or N,H,W,C), got {self.shape}")
        channels = self.channels
        if channels != (1 if self.color_layout == "GRAY" else 3):
            raise ValueError(
                f"image input {self.name!r}: {self.color_layout} needs "
                f"{1 if self.color_layout == 'GRAY' else 3} channels, shape {self.shape} has {channels}"
            )
        for what, values in (("bias", self.bias), ("scale", self.scale)):
            if isinstance(values, tuple) and len(values) not in (1, channels):
                raise ValueError(f"image input {self.name!r}: {what} needs 1 or {channels} values, got {len(values)}")
        if min(self.height, self.width) < 1:
            raise ValueError(f"image input {self.name!r}: height and width must be fixed, got shape {self.shape}")
        return self

    @property
    def channels(self) -> int:
        return self.shape[1] if self.channel_layout == "NCHW" else self.shape[3]

    @property
    def height(self) -> int:
        return self.shape[2] if self.channel_layout == "NCHW" else self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[3] if self.channel_layout == "NCHW" else self.shape[2]


InputType = Annotated[ImageType | TensorType, Field(discriminator="kind")]
