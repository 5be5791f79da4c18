"""The `manifest.json` of a model package: everything a runtime or a person needs besides the weights.

Validated by pydantic so a hand-edited or foreign manifest fails loudly with the
field that is wrong, instead of surfacing later as a shape error at inference time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferd.types import ImageType, InputType, TensorType, TextType

FORMAT_VERSION: Literal[1] = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Classifier(_Strict):
    """Which output holds class scores, their labels, and how to turn scores into probabilities."""

    output: str
    labels: list[str]
    activation: Literal["softmax", "sigmoid", "none"] = "softmax"


class Source(_Strict):
    """Where the package came from; `factory` lets benchmarks rebuild the source model as a baseline."""

    framework: str
    framework_version: str | None = None
    factory: str | None = Field(None, description="'module:function' returning the source model")


class Fidelity(_Strict):
    """How closely the package's outputs match its source (or its uncompressed parent)."""

    reference: str = Field(description="what the outputs were compared with, e.g. 'pytorch 2.13.0 eager'")
    runtime: str = Field(description="what ran the package for the comparison")
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float | None = None
    min_cosine_similarity: float | None = Field(
        None, description="the lowest cosine similarity between a row and its reference row, for embedding models"
    )
    tolerance: float
    passed: bool


class CompressionStep(_Strict):
    """One optimization applied to the package, in order."""

    kind: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
    version: str = "1"
    author: str = ""
    license: str = ""
    description: str = ""
    source: Source
    inputs: list[InputType] = Field(min_length=1)
    outputs: list[TensorType] = Field(min_length=1)
    classifier: Classifier | None = None
    precision: Literal["fp32", "fp16", "bf16", "int8", "mixed"] = "fp32"
    compression: list[CompressionStep] = Field(default_factory=list)
    fidelity: Fidelity | None = None
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256 hex")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    inferd_version: str = ""

    @model_validator(mode="after")
    def _distinct_graph_inputs(self) -> Manifest:
        names = [spec.name for spec in self.graph_inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"inputs feed the graph inputs {names}; each graph input may be fed only once")
        return self

    @property
    def graph_inputs(self) -> list[ImageType | TensorType]:
        """The ONNX graph's inputs: what backends are fed, with each text input replaced by its token tensors."""
        return [tensor for spec in self.inputs
                for tensor in (spec.tensors if isinstance(spec, TextType) else (spec,))]

    def input(self, name: str) -> InputType:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def batch_dynamic(self) -> bool:
        """True when every input and output has a dynamic leading (batch) dimension."""
        return all(spec.shape and spec.shape[0] == -1 for spec in [*self.inputs, *self.outputs])
