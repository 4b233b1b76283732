"""Sniff, validate, decode and render medical images (PNG, JPEG, DICOM, NIfTI) from uploads.

Typical use::

    from clearscan.imaging import decode, render_png

    img = decode(upload_bytes)          # raises ImagingError subclasses only
    png = render_png(img, preset="lung")
"""

from clearscan.imaging.decode import DecodedImage, Limits, decode
from clearscan.imaging.errors import CorruptImage, ImageTooLarge, ImagingError, UnsupportedFormat
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
