"""Sniff, validate, decode and render medical images (PNG, JPEG, DICOM, NIfTI) from uploads.

Typical use::

    from clearscan.imaging import decode, render_png

    img = decode(upload_bytes)          # raises ImagingError subclasses only
    png = render_png(img, preset="lung")

Layout: :mod:`~clearscan.imaging.sniff` (type from content), :mod:`~clearscan.imaging.inflate`
(bounded decompression), :mod:`~clearscan.imaging.limits`, :mod:`~clearscan.imaging.formats`
(one decoder per format behind :func:`decode`), :mod:`~clearscan.imaging.render`.
"""

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, ImagingError, UnsupportedFormat
from clearscan.imaging.formats import DecodedImage, decode
from clearscan.imaging.limits import Limits
from clearscan.imaging.render import WINDOW_PRESETS, available_presets, render_png
from clearscan.imaging.sniff import ImageFormat, sniff

__all__ = [
    "WINDOW_PRESETS",
    "CorruptImage",
    "DecodedImage",
    "ImageFormat",
    "ImageTooLarge",
    "ImagingError",
    "Limits",
    "UnsupportedFormat",
    "available_presets",
    "decode",
    "render_png",
    "sniff",
]
