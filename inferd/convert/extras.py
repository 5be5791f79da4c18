"""Optional frameworks: imported when a model of theirs is converted, with an install hint when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from inferd.errors import ConversionError


def require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConversionError(
            f"converting this model needs {module.split('.')[0]}, part of the {extra} extra: "
            f"pip install 'inferd[{extra}]'"
        ) from None
