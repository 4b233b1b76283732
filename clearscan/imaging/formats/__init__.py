"""One decoder module per upload format, all with the same ``decode(data, *, limits, frame)``.

:func:`decode` sniffs the format from the content and hands the bytes to the module that
:data:`DECODERS` names for it: :mod:`~clearscan.imaging.formats.raster` (PNG, JPEG),
:mod:`~clearscan.imaging.formats.dicom` and :mod:`~clearscan.imaging.formats.nifti`. A new
format is a new module here and one line in the table (and its signature in
:mod:`clearscan.imaging.sniff`).

Design rules (uploads are untrusted):

* the type comes from the content (:func:`clearscan.imaging.sniff.sniff`), never a filename;
* image dimensions are checked against :class:`~clearscan.imaging.limits.Limits` *before* any
  pixel buffer is allocated (PNG/JPEG via Pillow's lazy ``Image.open``, DICOM from the header
  elements and the compressed frame's own header, NIfTI from the header; gzip and deflate
  streams through the bounded decompressor of :mod:`clearscan.imaging.inflate`);
* every failure is an :class:`~clearscan.imaging.errors.ImagingError` subclass; unexpected
  exceptions from Pillow, pydicom, GDCM, nibabel or numpy become
  :class:`~clearscan.imaging.errors.CorruptImage`;
* patient identifiers are never read into messages or metadata: only image-pixel-module
  elements, the modality and the study/series/instance UIDs are looked at;
* nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, ImagingError
from clearscan.imaging.formats import dicom, nifti, raster
from clearscan.imaging.formats.base import FATAL, DecodedImage, FormatDecoder, describe_exc
from clearscan.imaging.limits import Limits
from clearscan.imaging.sniff import ImageFormat, sniff

__all__ = ["DECODERS", "DecodedImage", "FormatDecoder", "decode"]

DECODERS: Mapping[ImageFormat, FormatDecoder] = MappingProxyType(
    {
        "png": raster.decode,
        "jpeg": raster.decode,
        "dicom": dicom.decode,
        "nifti": nifti.decode,
    }
)


def decode(data: bytes, *, limits: Limits = Limits(), frame: int | None = None) -> DecodedImage:
    """Sniff, validate and decode ``data``.

    ``frame`` selects the DICOM frame or NIfTI slice (along the third axis of the RAS-oriented
    volume); by default the middle one. Raises only :class:`ImagingError` subclasses.
    """
    try:
        if not isinstance(data, bytes):
            data = bytes(data)
        kind = sniff(data)
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
            raise CorruptImage("frame must be an integer")
        return DECODERS[kind](data, limits=limits, frame=frame)
    except ImagingError:
        raise
    except MemoryError as exc:
        raise ImageTooLarge("not enough memory to decode this image") from exc
    except BaseException as exc:
        # BaseException: Rust decoders (pylibjpeg-rle via pyo3) raise PanicException, which is
        # not an Exception subclass. Only interpreter-level exits propagate.
        if isinstance(exc, FATAL):
            raise
        raise CorruptImage(f"could not decode image: {describe_exc(exc)}") from exc
