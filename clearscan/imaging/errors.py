"""Exceptions raised by :mod:`clearscan.imaging`.

Every failure to sniff, validate or decode an upload is reported as a subclass of
:class:`ImagingError`, itself a :class:`~clearscan.errors.ClearScanError`: ``status_code`` is the
HTTP status the reply carries and ``detail`` a short human-readable message. Each subclass also
derives from the matching general error (:class:`~clearscan.errors.UnsupportedMedia`,
:class:`~clearscan.errors.Unprocessable`, :class:`~clearscan.errors.TooLarge`), so code that
handles those handles imaging failures too. Messages never contain patient identifiers.
"""

from __future__ import annotations

from clearscan.errors import ClearScanError, TooLarge, Unprocessable, UnsupportedMedia

__all__ = ["CorruptImage", "ImageTooLarge", "ImagingError", "UnsupportedFormat"]


class ImagingError(ClearScanError):
    """Base class of every imaging failure (HTTP 422 unless a subclass says otherwise)."""

    status_code: int = 422
    title: str = Unprocessable.title


class UnsupportedFormat(ImagingError, UnsupportedMedia):
    """The content is not a supported image type (or uses an unsupported encoding)."""

    status_code = 415
    title = UnsupportedMedia.title


class CorruptImage(ImagingError, Unprocessable):
    """Corrupt, truncated or empty data, missing pixel data, or pixels that cannot be decoded."""

    status_code = 422
    title = Unprocessable.title


class ImageTooLarge(ImagingError, TooLarge):
    """Image dimensions exceed the configured limits (pixel bombs)."""

    status_code = 413
    title = TooLarge.title
