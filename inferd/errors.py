"""Errors a user can cause, each with a message that says what was wrong and what to do.

Every class carries the HTTP status the server answers with, so the server maps
errors to responses without a table that could drift from this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class InferdError(Exception):
    """Base class: something the user can fix. Never raised for internal bugs."""

    status_code: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(InferdError):
    """A request payload (tensor, image, text) that the model cannot take."""


class InvalidImage(InvalidInput):
    """Bytes that do not decode to an image, or an image inferd refuses to decode."""


class ImageTooLarge(InvalidImage):
    """An image whose pixel count is over the limit (a guard against decompression bombs)."""

    status_code = 413


class PayloadTooLarge(InvalidInput):
    """A request body over the configured size limit."""

    status_code = 413


class PackageError(InferdError):
    """A model package that is missing, incomplete, tampered with or malformed."""


class ConversionError(InferdError):
    """A source model that could not be converted."""


class FidelityError(ConversionError):
    """A converted or compressed model whose outputs drift from the source beyond tolerance."""


class BackendUnavailable(InferdError):
    """A backend, device or precision that this machine or installation cannot provide."""


class ModelNotFound(InferdError):
    """A model name or version the repository does not hold."""

    status_code = 404


class InvalidModelName(InferdError):
    """A model name that could escape the repository directory or is otherwise malformed."""


class Overloaded(InferdError):
    """Too many predictions in flight; the caller should retry later."""

    status_code = 429

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(InferdError):
    """A model that is loading, unloading or warming up."""

    status_code = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferdError):
    """A request whose deadline passed before it could run."""

    status_code = 504


class Unauthorized(InferdError):
    """A missing or wrong API key."""

    status_code = 401


class Forbidden(InferdError):
    """A request for something the server's configuration turns off."""

    status_code = 403


def dotted(location: tuple[int | str, ...]) -> str:
    return ".".join(map(str, location))


def validation_summary(exc: ValidationError, name: Callable[[tuple[int | str, ...]], str] = dotted) -> str:
    """pydantic's complaints as one line, each under the name the user knows the value by (`name` maps its location)."""
    return "; ".join(f"{name(tuple(error['loc']))}: {error['msg']}" for error in exc.errors())
