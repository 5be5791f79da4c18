"""What a path holds: a model package, or a source model inferd converts on the fly.

The suffix proposes a format and the first bytes confirm it (HDF5 and TFLite carry
signatures, Keras and TorchScript files are zip archives with known entries), so a
mislabelled file is told apart from a corrupt one before any framework is imported.
"""

from __future__ import annotations

import os
import sys
import zipfile
from enum import StrEnum
from pathlib import Path

from inferd.convert.sklearn import PICKLE_SUFFIXES
from inferd.convert.torchscript import require_torchscript
from inferd.errors import ConversionError, PackageError
from inferd.package import MANIFEST_FILE

ACCEPTED = (
    "a model package directory (with manifest.json), an ONNX file (.onnx), a TensorFlow SavedModel directory "
    "(with saved_model.pb), a Keras file (.keras, .h5), a TFLite file (.tflite), a TorchScript file "
    "(.pt, .pth, .ts, .torchscript; written by torch.jit.save) or, with allow_pickle, a pickled scikit-learn "
    "estimator (.pkl, .pickle, .joblib)"
)
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
_COREML_SUFFIXES = (".mlpackage", ".mlmodelc", ".mlmodel")


class SourceKind(StrEnum):
    PACKAGE = "package"
    ONNX = "onnx"
    SAVED_MODEL = "saved_model"
    KERAS = "keras"
    TFLITE = "tflite"
    TORCHSCRIPT = "torchscript"
    SKLEARN_PICKLE = "sklearn_pickle"


def detect_source(path: str | os.PathLike[str]) -> SourceKind:
    """The kind of model at `path`, or an error that says what inferd accepts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _COREML_SUFFIXES:
        raise ConversionError(_coreml_message(path))
    if not path.exists():
        raise PackageError(f"{path} does not exist; inferd loads {ACCEPTED}")
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():
            return SourceKind.PACKAGE
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return SourceKind.SAVED_MODEL
        raise PackageError(
            f"{path / MANIFEST_FILE} is missing: {path} is not a model package, nor a TensorFlow SavedModel "
            f"(no saved_model.pb); inferd loads {ACCEPTED}"
        )
    head = _head(path)
    if suffix == ".onnx":
        return SourceKind.ONNX
    if suffix == ".tflite":
        if head[4:8] != b"TFL3":
            raise ConversionError(f"{path} is not a TFLite flatbuffer (no TFL3 identifier); check the file")
        return SourceKind.TFLITE
    if suffix in (".h5", ".hdf5"):
        if not head.startswith(_HDF5_SIGNATURE):
            raise ConversionError(f"{path} is not an HDF5 file; a Keras .h5 model starts with the HDF5 signature")
        return SourceKind.KERAS
    if suffix == ".keras":
        if not _zip_has(path, "config.json"):
            raise ConversionError(f"{path} is not a Keras archive (a zip with config.json); check the file")
        return SourceKind.KERAS
    if suffix in _TORCHSCRIPT_SUFFIXES:
        require_torchscript(path)
        return SourceKind.TORCHSCRIPT
    if suffix in PICKLE_SUFFIXES:
        return SourceKind.SKLEARN_PICKLE
    raise ConversionError(f"{path}: inferd does not know the {suffix or 'suffix-less'} format; it loads {ACCEPTED}")


def _coreml_message(path: Path) -> str:
    where = "" if sys.platform == "darwin" else f" (this is {sys.platform})"
    return (
        f"{path} is a Core ML model: Core ML runs only on macOS{where}, and there is no converter from Core ML "
        "back to ONNX; convert the original model (PyTorch, TensorFlow, ONNX) instead. For the other direction, "
        "`inferd export coreml PACKAGE` turns an inferd package into an .mlpackage for Apple devices"
    )


def _head(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(16)
    except OSError as exc:
        raise PackageError(f"cannot read {path}: {exc.strerror}") from None


def _zip_has(path: Path, entry: str) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return entry in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
