"""Content-based detection of upload types.

The type of an upload is decided from its bytes only (magic numbers and header structure), never
from a filename or a client-supplied content type. Gzip data is looked into through the bounded
decompressor of :mod:`clearscan.imaging.inflate`, never inflated whole.
"""

from __future__ import annotations

import struct
from typing import Literal

from clearscan.imaging.errors import CorruptImage, UnsupportedFormat
from clearscan.imaging.inflate import GZIP_MAGIC, gunzip_prefix

__all__ = ["ImageFormat", "sniff"]

ImageFormat = Literal["png", "jpeg", "dicom", "nifti"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8\xff"

NIFTI1_HEADER_SIZE = 348
NIFTI2_HEADER_SIZE = 540
_NIFTI_HEADER_SIZES = (NIFTI1_HEADER_SIZE, NIFTI2_HEADER_SIZE)
NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
NIFTI2_MAGICS = (b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n")

# Every DICOM value representation; used to recognise explicit-VR data elements.
_DICOM_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL "
    b"UN UR US UT UV".split()
)

# Cheap descriptions of common non-supported types, used for the 415 message.
_OTHER_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"II+\x00", "a BigTIFF image"),
    (0, b"MM\x00+", "a BigTIFF image"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 (JP2) image"),
    (0, b"\xff\x4f\xff\x51", "a raw JPEG 2000 codestream"),
    (0, b"\xff\x0a", "a JPEG XL image"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "a JPEG XL image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"PK\x05\x06", "an empty ZIP archive"),
    (0, b"BZh", "bzip2-compressed data"),
    (0, b"\xfd7zXZ\x00", "xz-compressed data"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed data"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!", "a RAR archive"),
    (0, b"\x7fELF", "an ELF executable"),
    (0, b"MZ", "a Windows executable"),
    (0, b"\x93NUMPY", "a NumPy array file"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"\x00\x00\x01\x00", "an ICO image"),
    (4, b"ftypavif", "an AVIF image"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftypmif1", "a HEIF image"),
    (4, b"ftyp", "an MP4/QuickTime video"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
)


def sniff(data: bytes) -> ImageFormat:
    """Return the image format of ``data`` judged from its content.

    Raises :class:`CorruptImage` for empty input and :class:`UnsupportedFormat` (naming what the
    data looks like, where that is cheap to tell) for anything that is not PNG, JPEG, DICOM or
    NIfTI-1/NIfTI-2 (optionally gzip-compressed).
    """
    if not data:
        raise CorruptImage("empty file")
    head = bytes(data[:1024])

    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    nifti = _nifti_kind(head)
    if nifti is not None:
        return "nifti"
    if head.startswith(GZIP_MAGIC):
        return _sniff_gzip(data)
    if _looks_like_bare_dicom(head, len(data)):
        return "dicom"
    if _looks_like_analyze(head):
        raise UnsupportedFormat(
            "unsupported file type: Analyze 7.5 header without NIfTI magic "
            "(convert it to a single-file .nii or .nii.gz)"
        )
    raise UnsupportedFormat(f"unsupported file type: {_describe(head)}")


def _sniff_gzip(data: bytes) -> ImageFormat:
    head = gunzip_prefix(data, NIFTI2_HEADER_SIZE)
    if _nifti_kind(head) is not None:
        return "nifti"
    if not head:
        raise CorruptImage("gzip data is truncated or empty")
    if len(head) >= 4:
        sizes = {struct.unpack_from("<i", head)[0], struct.unpack_from(">i", head)[0]}
        if any(size in sizes and len(head) < size for size in _NIFTI_HEADER_SIZES):
            raise CorruptImage("gzip-compressed NIfTI header is truncated")
    raise UnsupportedFormat(
        f"unsupported file type: gzip-compressed data that is not a NIfTI volume "
        f"(it contains {_describe(head)})"
    )


def _nifti_kind(head: bytes) -> int | None:
    """Return 1 or 2 for a NIfTI-1/NIfTI-2 header (any byte order), else ``None``."""
    if len(head) >= NIFTI1_HEADER_SIZE and head[344:348] in NIFTI1_MAGICS:
        size_le, size_be = struct.unpack_from("<i", head)[0], struct.unpack_from(">i", head)[0]
        if NIFTI1_HEADER_SIZE in (size_le, size_be):
            return 1
    if len(head) >= NIFTI2_HEADER_SIZE and head[4:12] in NIFTI2_MAGICS:
        size_le, size_be = struct.unpack_from("<i", head)[0], struct.unpack_from(">i", head)[0]
        if NIFTI2_HEADER_SIZE in (size_le, size_be):
            return 2
    return None


def _looks_like_analyze(head: bytes) -> bool:
    if len(head) < NIFTI1_HEADER_SIZE:
        return False
    size_le, size_be = struct.unpack_from("<i", head)[0], struct.unpack_from(">i", head)[0]
    return NIFTI1_HEADER_SIZE in (size_le, size_be)


def _looks_like_bare_dicom(head: bytes, total: int) -> bool:
    """A DICOM dataset without the 128-byte preamble and ``DICM`` prefix.

    Accepted when the first data element is in group 0x0002 (file meta) or 0x0008 (identifying
    information) and is plausibly encoded as explicit VR little/big endian or implicit VR little
    endian.
    """
    if len(head) < 8:
        return False
    group_le, elem_le = struct.unpack_from("<HH", head)
    group_be, elem_be = struct.unpack_from(">HH", head)
    vr = head[4:6]
    if group_le in (0x0002, 0x0008) and elem_le < 0x1000:
        if vr in _DICOM_VRS:
            return True
        (length,) = struct.unpack_from("<I", head, 4)  # implicit VR little endian
        return length <= min(total - 8, 1024)
    return group_be == 0x0008 and elem_be < 0x1000 and vr in _DICOM_VRS


def _describe(head: bytes) -> str:
    for offset, magic, name in _OTHER_SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[:4] == b"RIFF":
        return "a RIFF (AVI/WAV) file"
    if head.startswith(GZIP_MAGIC):
        return "gzip-compressed data"
    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip("\ufeff \t\r\n").lower()
        if lowered.startswith(("<!doctype html", "<html")):
            return "an HTML document"
        if lowered.startswith("<svg") or (lowered.startswith("<?xml") and "<svg" in lowered):
            return "an SVG image"
        if lowered.startswith("<?xml"):
            return "an XML document"
        if lowered.startswith(("{", "[")):
            return "JSON or other text"
        return "plain text"
    return "unrecognised binary data"


def _as_text(head: bytes) -> str | None:
    sample = head[:512]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 4:  # not just a multi-byte character cut at the end
            return None
        text = sample[: exc.start].decode("utf-8")
    if not text:
        return None
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return text if printable / len(text) > 0.95 else None
