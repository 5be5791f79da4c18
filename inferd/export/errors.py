"""Errors a user can cause while exporting a package to another format, and the wording their messages share."""

from __future__ import annotations

from inferd.errors import InferdError


class ExportError(InferdError):
    """An export that cannot be carried out as asked; the message says what to change."""


class UnsupportedOperation(ExportError):
    """A network with an operation the target format cannot express; the message names the op and the node."""


ONNX_ADVICE = ("export from the PyTorch source instead (a package whose manifest names an inferd factory is rebuilt in "
               "PyTorch), or re-export the ONNX model without the op")
"""What to do when a network rebuilt from ONNX cannot be exported: every such message ends with it."""


def first_line(exc: BaseException) -> str:
    """A library's exception as one clause of an inferd message: its first line, without the closing period."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else ""
