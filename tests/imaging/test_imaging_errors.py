"""Imaging errors belong to the one error root, with their HTTP statuses unchanged."""

from __future__ import annotations

import pytest

from clearscan import errors
from clearscan.imaging import CorruptImage, ImageTooLarge, ImagingError, UnsupportedFormat


@pytest.mark.parametrize(
    ("cls", "general", "status"),
    [
        (UnsupportedFormat, errors.UnsupportedMedia, 415),
        (CorruptImage, errors.Unprocessable, 422),
        (ImageTooLarge, errors.TooLarge, 413),
    ],
)
def test_imaging_errors_derive_from_the_general_ones(cls, general, status):
    exc = cls("not a scan")
    assert isinstance(exc, ImagingError)
    assert isinstance(exc, general)
    assert isinstance(exc, errors.ClearScanError)
    assert exc.status_code == status == general.status_code
    assert exc.title == general.title
    assert exc.detail == str(exc) == "not a scan"


def test_base_imaging_error_is_unprocessable():
    exc = ImagingError("bad")
    assert isinstance(exc, errors.ClearScanError)
    assert exc.status_code == 422
    assert not isinstance(UnsupportedFormat("x"), errors.Unprocessable)
