"""Turn whatever the user points at (a package, an ONNX/TensorFlow/TorchScript file) into a package on disk.

Model files are converted on first use and the package is kept in the cache,
keyed by the bytes of the source (every file of a SavedModel, an ONNX file's
external data) and the conversion options, so the next load skips conversion and
an edited file is converted again. A lock per key makes concurrent loads of the
same file convert it once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx

from inferd.convert import ConvertOptions, SourceKind, convert_any, detect_source
from inferd.convert.prepare import Progress, no_progress
from inferd.errors import PackageError
from inferd.package import ModelPackage, sha256_file
from inferd.runtime import cache


@dataclass(frozen=True)
class ResolvedSource:
    package: ModelPackage
    kind: SourceKind
    conversion_cached: bool | None
    """None for a package given as such; True when the converted package came from the cache."""


def resolve_source(
    source: str | os.PathLike[str],
    *,
    options: ConvertOptions | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress = no_progress,
) -> ResolvedSource:
    path = Path(source)
    kind = detect_source(path)
    if kind is SourceKind.PACKAGE:
        return ResolvedSource(ModelPackage.load(path), kind, None)
    options = options or ConvertOptions()
    progress(f"hashing {path.name}")
    target = cache.converted_dir(cache.cache_root(cache_dir), source_digest(path, kind), options.model_dump_json())
    with _locked(target):
        try:
            resolved = ResolvedSource(ModelPackage.load(target), kind, True)
            cache.mark_used(target)
            return resolved
        except PackageError:
            pass  # not converted yet, or a damaged entry: convert (again)
        package = convert_any(path, options, progress=progress)
        progress("saving the package to the cache")
        return ResolvedSource(package.save(target, overwrite=True), kind, False)


def source_digest(path: Path, kind: SourceKind) -> str:
    """sha256 over every file the source is made of, with its relative name."""
    digest = hashlib.sha256(kind.value.encode())
    for relative, file in _source_files(path, kind):
        digest.update(f"{relative}\0{sha256_file(file)}\0".encode())
    return digest.hexdigest()


def _source_files(path: Path, kind: SourceKind) -> Iterator[tuple[str, Path]]:
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield file.relative_to(path).as_posix(), file
        return
    yield path.name, path
    if kind is SourceKind.ONNX:
        yield from _onnx_external_data(path)


def _onnx_external_data(path: Path) -> Iterator[tuple[str, Path]]:
    """The weight files an ONNX file points to: an edit there must miss the cache as an edit of the file does."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not loadable: conversion will report it properly; the file's own hash is enough here
        return
    helper = onnx.external_data_helper
    locations = {helper.ExternalDataInfo(tensor).location
                 for tensor in model.graph.initializer if helper.uses_external_data(tensor)}
    for location in sorted(locations):
        file = path.parent / location
        if file.is_file():
            yield location, file


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(f"{target.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
