"""Exceptions raised by :mod:`clearscan.imaging`.

Every failure to sniff, validate or decode an upload is reported as a subclass of
:class:`ImagingError`. ``status_code`` is the HTTP status the API layer should answer with and
``detail`` a short human-readable message. Messages never contain patient identifiers.
"""

from __future__ import annotations

__all__ = ["CorruptImage", "ImageTooLarge", "ImagingError", "UnsupportedFormat"]


class ImagingError(Exception):
    """Base class of every imaging failure (HTTP 422 unless a subclass says otherwise)."""

    status_code: int = 422

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class UnsupportedFormat(ImagingError):
    """The content is not a supported image type (or uses an unsupported encoding)."""

    status_code = 415


class CorruptImage(ImagingError):
    """Corrupt, truncated or empty data, missing pixel data, or pixels that cannot be decoded."""

    status_code = 422


class ImageTooLarge(ImagingError):
    """Image dimensions exceed the configured limits (pixel bombs)."""

    status_code = 413
