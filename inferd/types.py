"""The user-facing vocabulary, named after Core ML's so its users feel at home.

`ImageType`, `TextType` and `TensorType` describe a model input both when
converting (what to export) and inside a package manifest (how to feed it), so one
definition serves the converter, the preprocessing in `inferd.io` and the server.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import PurePosixPath
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


class TextType(_Spec):
    """A text input: a batch of strings that inferd tokenizes into the token tensors the graph takes.

    One string becomes several tensors (token ids, attention mask, token types),
    so a TextType names the graph inputs it feeds instead of being one itself;
    each is int64 of shape [batch, sequence]. `tokenizer` is a file inside the
    package (a Hugging Face `tokenizers` JSON file), so the exact vocabulary the
    model was trained with travels with it. Texts are cut to `max_length` tokens
    (special tokens included) and each batch is padded to its longest text.
    """

    kind: Literal["text"] = "text"
    name: str = Field("text", min_length=1, max_length=128)
    shape: tuple[int, ...] = Field((-1,), description="a batch of strings; -1 for a dynamic batch")
    dtype: Literal["string"] = "string"
    tokenizer: str = Field("tokenizer.json", description="package-relative path of the tokenizers JSON file")
    max_length: int = Field(gt=1, le=1 << 20, description="tokens per text, special tokens included")
    input_ids: str = Field("input_ids", min_length=1, max_length=128)
    attention_mask: str | None = Field("attention_mask", min_length=1, max_length=128)
    token_type_ids: str | None = Field(None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _consistent(self) -> TextType:
        if len(self.shape) != 1:
            raise ValueError(f"text input {self.name!r}: shape is the batch of strings, one dim like (-1,); got {self.shape}")
        names = [self.name, *(tensor.name for tensor in self.tensors)]
        if len(set(names)) != len(names):
            raise ValueError(f"text input {self.name!r}: the text and its token tensors need distinct names, got {names}")
        path = PurePosixPath(self.tokenizer)
        if path.is_absolute() or ".." in path.parts or "\\" in self.tokenizer or not path.parts:
            raise ValueError(f"text input {self.name!r}: tokenizer must be a path inside the package, got {self.tokenizer!r}")
        return self

    @property
    def tensors(self) -> tuple[TensorType, ...]:
        """The graph inputs this text feeds, in the order ids, attention mask, token types."""
        names = (self.input_ids, self.attention_mask, self.token_type_ids)
        return tuple(TensorType(name=name, shape=(self.shape[0], -1), dtype="int64") for name in names if name)


InputType = Annotated[ImageType | TensorType | TextType, Field(discriminator="kind")]
