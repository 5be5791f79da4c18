"""TorchScript file (`torch.jit.save`) → ModelPackage, through the PyTorch converter's TorchScript exporter.

A TorchScript archive holds code and weights but no input shapes, so the caller
gives one (`input_shape`, or full `inputs`); fidelity is then measured against
the loaded ScriptModule exactly as for any PyTorch module.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from inferd.convert.assemble import package_name
from inferd.convert.inputs import ImagePreprocessing, Spec, resolve_inputs
from inferd.convert.pytorch import convert_pytorch
from inferd.errors import ConversionError
from inferd.package import ModelPackage
from inferd.types import TensorType


def convert_torchscript(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[Spec] | None = None,
    input_shape: Sequence[int] | None = None,
    image: ImagePreprocessing | None = None,
    classifier_labels: Sequence[str] | None = None,
    activation: str | None = None,
    metadata: Mapping[str, str] | None = None,
    sample_inputs: Sequence[Mapping[str, np.ndarray]] | None = None,
    tolerance: float = 1e-3,
    allow_fidelity_loss: bool = False,
) -> ModelPackage:
    """Load a ScriptModule and convert it; `input_shape` (batch first) names the one input `image` or `input`."""
    import torch

    path = Path(path)
    require_torchscript(path)
    if inputs is None:
        if input_shape is None:
            raise ConversionError(
                f"{path.name} is TorchScript, which does not record input shapes; give the shape the model "
                "takes with input_shape=(1, 3, 224, 224) (--input-shape 1,3,224,224)"
            )
        name = (image.input if image else None) or ("image" if image else "input")
        if len(input_shape) < 1 or min(input_shape) < 1:
            raise ConversionError(f"input_shape {list(input_shape)} needs positive sizes, batch first")
        declared = TensorType(name=name, shape=(-1, *input_shape[1:]), dtype="float32")
        inputs = resolve_inputs([declared], image=image)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError and its own errors for archives it cannot read
        raise ConversionError(f"torch.jit.load cannot read {path}: {str(exc).strip().splitlines()[0]}") from None
    meta = {"name": package_name(path.stem), **(metadata or {})}
    return convert_pytorch(
        module, inputs=inputs, classifier_labels=classifier_labels, activation=activation, metadata=meta,
        sample_inputs=sample_inputs, exporter="torchscript", tolerance=tolerance, allow_fidelity_loss=allow_fidelity_loss,
    )


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry their code (`<name>/code/...`); torch.save pickles of modules or weights do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.startswith("code/") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def require_torchscript(path: Path) -> None:
    if not is_torchscript(path):
        raise ConversionError(
            f"{path} is not a TorchScript archive: a file written by torch.save (a state_dict or a pickled module) "
            "cannot be loaded without its Python class; save it with torch.jit.save(torch.jit.script(model), ...) "
            "or convert the module in Python with inferd.convert(model, inputs=[...])"
        )
