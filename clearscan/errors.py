"""The one error root. Every domain error derives from :class:`ClearScanError` and carries the
HTTP status it maps to; one handler turns it into the API's error body (``{"detail": ...}``),
another into the web's error page. Services raise these and never ``HTTPException``.

This module imports nothing else of the package, so any layer may raise its errors.
"""

from __future__ import annotations

__all__ = [
    "ClearScanError",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "TooLarge",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMedia",
]


class ClearScanError(Exception):
    """Base of every domain error. ``detail`` is a short message safe to show the user: it never
    holds patient identifiers. ``status_code`` is the HTTP status (400 unless a subclass says
    otherwise); ``title`` is the heading of the web error page."""

    status_code: int = 400
    title: str = "Request refused"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class Invalid(ClearScanError):
    """The request is malformed or asks for something impossible (400)."""

    status_code = 400


class Forbidden(ClearScanError):
    status_code = 403
    title = "Not allowed"


class NotFound(ClearScanError):
    status_code = 404
    title = "Not found"


class Conflict(ClearScanError):
    """The request clashes with the current state (a duplicate name, a job already done)."""

    status_code = 409
    title = "Conflict"


class TooLarge(ClearScanError):
    status_code = 413
    title = "Too large"


class UnsupportedMedia(ClearScanError):
    status_code = 415
    title = "Unsupported format"


class Unprocessable(ClearScanError):
    """Well-formed but unusable content: a corrupt image, a manifest that does not validate."""

    status_code = 422
    title = "Cannot use this"


class Unavailable(ClearScanError):
    """A needed resource cannot serve now (a model that failed to load)."""

    status_code = 503
    title = "Unavailable"
