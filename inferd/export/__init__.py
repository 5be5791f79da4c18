"""Exports of a ModelPackage to formats that inferd does not run itself, for other platforms.

`to_coreml` writes a Core ML `.mlpackage` for Apple targets; conversion and
compression run on any machine, prediction only on macOS.
"""

from __future__ import annotations

from inferd.export.coreml import CoreMLExport, to_coreml
from inferd.export.errors import ExportError, UnsupportedOperation

__all__ = ["CoreMLExport", "ExportError", "UnsupportedOperation", "to_coreml"]
