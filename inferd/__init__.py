"""inferd: convert, compress, compile and serve trained models on any machine.

The top-level names mirror Core ML's user-facing API: `convert` a source model
into a package, `load` it compiled for this machine, describe inputs with
`ImageType`/`TextType`/`TensorType`, choose `ComputeUnit` and `Precision`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import inferd.convert as _converters
from inferd.types import ComputeUnit, ImageType, Precision, TensorType, TextType
from inferd.version import __version__

if TYPE_CHECKING:
    from inferd.package import ModelPackage
    from inferd.runtime import CompiledModel, Device

__all__ = [
    "ComputeUnit", "ImageType", "ModelPackage", "Precision", "TensorType", "TextType", "__version__",
    "convert", "devices", "load",
]


def convert(model: Any, **kwargs: Any) -> ModelPackage:
    """Convert a model (PyTorch, Keras, scikit-learn, ONNX) or a model file into a ModelPackage.

    See `inferd.convert.convert` for how the framework is chosen and the converters for their options.
    """
    return _converters.convert(model, **kwargs)


def load(model: Any, **kwargs: Any) -> CompiledModel:
    """Load a package, or a model file converted on the fly (and cached), compiled for this machine.

    See `inferd.runtime.load` for the options.
    """
    from inferd.runtime import load as runtime_load

    return runtime_load(model, **kwargs)


def devices() -> list[Device]:
    """Every compute device and the backend that reaches it."""
    from inferd.runtime import devices as runtime_devices

    return runtime_devices()


def __getattr__(name: str) -> Any:
    if name == "ModelPackage":
        from inferd.package import ModelPackage

        return ModelPackage
    if name == "io":
        import inferd.io

        return inferd.io
    raise AttributeError(name)
