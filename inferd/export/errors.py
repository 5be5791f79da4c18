"""Errors a user can cause while exporting a package to another format."""

from __future__ import annotations

from inferd.errors import InferdError


class ExportError(InferdError):
    """An export that cannot be carried out as asked; the message says what to change."""


class UnsupportedOperation(ExportError):
    """A network with an operation the target format cannot express; the message names the op and the node."""
