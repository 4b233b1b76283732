"""Validate and decode untrusted PNG, JPEG, DICOM and NIfTI uploads into display-ready arrays.

Design rules (uploads are untrusted):

* the type comes from the content (:func:`clearscan.imaging.sniff.sniff`), never a filename;
* image dimensions are checked against :class:`Limits` *before* any pixel buffer is allocated
  (PNG/JPEG via Pillow's lazy ``Image.open``, DICOM from the header elements, NIfTI from the
  header, gzip and deflate streams through a bounded streaming decompressor);
* every failure is an :class:`~clearscan.imaging.errors.ImagingError` subclass; unexpected
  exceptions from Pillow, pydicom, nibabel or numpy become :class:`CorruptImage`;
* patient identifiers are never read into messages or metadata: only image-pixel-module
  elements, the modality and the study/series/instance UIDs are looked at.
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any

import numpy as np

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, ImagingError, UnsupportedFormat
from clearscan.imaging.sniff import (
    GZIP_MAGIC,
    gunzip_prefix,
    inflate_chunks,
    inflate_prefix,
    sniff,
)

__all__ = ["DecodedImage", "Limits", "decode"]

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CS_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
# NIfTI datatype code -> (name, bytes per voxel) for the types we decode.
_NIFTI_DTYPES: dict[int, tuple[str, int]] = {
    2: ("uint8", 1),
    4: ("int16", 2),
    8: ("int32", 4),
    16: ("float32", 4),
    64: ("float64", 8),
    256: ("int8", 1),
    512: ("uint16", 2),
    768: ("uint32", 4),
    1024: ("int64", 8),
    1280: ("uint64", 8),
}
_NIFTI_UNSUPPORTED = {
    1: "binary",
    32: "complex64",
    128: "RGB24",
    1536: "float128",
    1792: "complex128",
    2048: "complex256",
    2304: "RGBA32",
}
_INFLATE_PLANE_CHUNK = 1 << 20
_MAX_NIFTI_VOX_OFFSET = 64 * 1024 * 1024  # header extensions larger than this are implausible
_MAX_MESSAGE = 200


@dataclass(frozen=True)
class Limits:
    """Caps checked before any pixels are decoded."""

    max_pixels: int = 64_000_000  # rows*cols(*samples) of the decoded image or slice
    max_dimension: int = 30_000  # any single side
    # voxels of a NIfTI volume (its first 3D volume): only one slice is kept in memory, but a
    # .nii.gz is decompressed up to that slice (or through, for sagittal/coronal storage)
    max_volume_voxels: int = 512_000_000


@dataclass
class DecodedImage:
    """A decoded, display/model-ready image plus non-identifying metadata."""

    pixels: np.ndarray = field(repr=False)  # float32, HxW or HxWx3, in [0, 1]
    values: np.ndarray | None = field(repr=False)  # float32 HxW in modality units, or None
    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    frames: int
    frame_index: int
    modality: str | None
    photometric: str | None
    study_uid: str | None
    series_uid: str | None
    sop_uid: str | None
    window: tuple[float, float] | None
    transfer_syntax: str | None


def decode(data: bytes, *, limits: Limits = Limits(), frame: int | None = None) -> DecodedImage:
    """Sniff, validate and decode ``data``.

    ``frame`` selects the DICOM frame or NIfTI slice (along the third axis of the RAS-oriented
    volume); by default the middle one. Raises only :class:`ImagingError` subclasses.
    """
    try:
        if not isinstance(data, bytes):
            data = bytes(data)
        fmt = sniff(data)
        if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int)):
            raise CorruptImage("frame must be an integer")
        if fmt == "dicom":
            return _decode_dicom(data, limits, frame)
        if fmt == "nifti":
            return _decode_nifti(data, limits, frame)
        return _decode_raster(data, fmt, limits, frame)
    except ImagingError:
        raise
    except MemoryError as exc:
        raise ImageTooLarge("not enough memory to decode this image") from exc
    except BaseException as exc:
        # BaseException: Rust decoders (pylibjpeg-rle via pyo3) raise PanicException, which is
        # not an Exception subclass. Only interpreter-level exits propagate.
        if isinstance(exc, _FATAL):
            raise
        raise CorruptImage(f"could not decode image: {_describe_exc(exc)}") from exc


_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


# --------------------------------------------------------------------------- helpers


def _describe_exc(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return text


def _check_size(kind: str, width: int, height: int, count: int, limits: Limits) -> None:
    """Raise before allocating anything when an image is degenerate or over the caps.

    ``count`` multiplies ``width * height`` (frames, slices, samples).
    """
    if width < 1 or height < 1 or count < 1:
        raise CorruptImage(f"{kind} has invalid dimensions {width} x {height}")
    if max(width, height) > limits.max_dimension:
        raise ImageTooLarge(
            f"{kind} is {width} x {height} pixels; the largest side allowed is "
            f"{limits.max_dimension:,} pixels"
        )
    total = width * height * count
    if total > limits.max_pixels:
        extra = f" x {count:,}" if count > 1 else ""
        raise ImageTooLarge(
            f"{kind} is {width} x {height}{extra} = {total:,} pixels, over the limit of "
            f"{limits.max_pixels:,}"
        )


def _finite(arr: np.ndarray) -> np.ndarray:
    """Replace NaN/inf by the finite minimum/maximum (background) so outputs stay finite."""
    mask = np.isfinite(arr)
    if mask.all():
        return arr
    if not mask.any():
        return np.zeros_like(arr)
    lo = arr[mask].min()
    hi = arr[mask].max()
    return np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)


def _rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 1] (clipped), as float32; constant images map to 0."""
    out = np.asarray(arr, dtype=np.float32)
    if not hi > lo:
        return np.zeros(out.shape, dtype=np.float32)
    out = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _min_max(arr: np.ndarray) -> tuple[float, float]:
    return float(arr.min()), float(arr.max())


# --------------------------------------------------------------------------- PNG / JPEG


def _decode_raster(data: bytes, fmt: str, limits: Limits, frame: int | None) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = fmt.upper()
    if frame not in (None, 0):
        raise CorruptImage(f"frame {frame} is out of range: a {name} image has 1 frame (valid 0)")
    try:
        # Local guard: Pillow's own bomb check fires inside open(); turn its warning into an
        # exception for the duration. (catch_warnings is process-global; a race with another
        # thread can at worst leave Pillow stricter, and our explicit check below still applies.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(BytesIO(data), formats=[name])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"{name} image is too large: {_describe_exc(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptImage(f"{name} header is corrupt or truncated") from exc
    except Exception as exc:
        raise CorruptImage(f"{name} header is corrupt: {_describe_exc(exc)}") from exc

    with im:
        width, height = im.size
        _check_size(f"{name} image", width, height, 1, limits)
        bit_depth = 8
        if fmt == "png" and len(data) > 24 and data[12:16] == b"IHDR":
            bit_depth = data[24] or 8
        elif fmt == "jpeg":
            bit_depth = int(getattr(im, "bits", 8) or 8)
        try:
            im.seek(0)  # APNG: first frame only
            im.load()
        except Exception as exc:
            raise CorruptImage(
                f"{name} image is truncated or corrupt: {_describe_exc(exc)}"
            ) from exc
        if fmt == "jpeg":
            # A broken EXIF block only loses the orientation hint.
            with contextlib.suppress(Exception):
                ImageOps.exif_transpose(im, in_place=True)
        pixels, channels = _pil_pixels(im)

    h, w = pixels.shape[:2]
    return DecodedImage(
        pixels=pixels,
        values=None,
        format=fmt,
        width=w,
        height=h,
        channels=channels,
        bit_depth=bit_depth,
        frames=1,
        frame_index=0,
        modality=None,
        photometric=None,
        study_uid=None,
        series_uid=None,
        sop_uid=None,
        window=None,
        transfer_syntax=None,
    )


def _pil_pixels(im: Any) -> tuple[np.ndarray, int]:
    """Convert a loaded Pillow image to float32 [0, 1] grayscale (HxW) or RGB (HxWx3)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im)
        return arr.astype(np.float32) * np.float32(1.0 / 65535.0), 1
    if mode == "I":
        arr = np.asarray(im).astype(np.float32)
        scale = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        return np.clip(arr * np.float32(1.0 / scale), 0.0, 1.0), 1
    if mode == "F":
        arr = _finite(np.asarray(im, dtype=np.float32))
        return _rescale(arr, *_min_max(arr)), 1
    if mode in ("P", "PA"):
        palette = im.getpalette() or []
        gray_palette = all(
            palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3)
        )
        if "transparency" in im.info or mode == "PA":
            im = im.convert("RGBA")
        im = im.convert("L" if gray_palette else "RGB")
        mode = im.mode
    if mode in ("1", "LA", "La", "L"):
        if mode != "L":
            im = im.convert("L")
        return np.asarray(im).astype(np.float32) * np.float32(1.0 / 255.0), 1
    if mode != "RGB":
        im = im.convert("RGB")  # RGBA/RGBX/CMYK/YCbCr/LAB/...: drop alpha, convert colour
    return np.asarray(im).astype(np.float32) * np.float32(1.0 / 255.0), 3


# --------------------------------------------------------------------------- DICOM


def _deflated_dataset_offset(data: bytes) -> int | None:
    """Where the deflated dataset starts if pydicom would treat ``data`` as deflated, else None.

    ``dcmread`` inflates a Deflated Explicit VR Little Endian dataset with an unbounded
    ``zlib.decompress`` (a deflate bomb), so such files are inflated here with a cap instead.
    pydicom can only see that transfer syntax if its UID is spelled out in the bytes; when it is,
    pydicom's own file-meta reader (the one ``dcmread`` uses) makes the decision, so the two can
    never disagree.
    """
    if _DEFLATED_TS.encode() not in data:
        return None
    fp = BytesIO(data)
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble

        read_preamble(fp, True)
        transfer_syntax = _read_file_meta_info(fp).get("TransferSyntaxUID", None)
    except Exception as exc:
        raise CorruptImage(
            f"DICOM file meta information is unreadable: {_describe_exc(exc)}"
        ) from exc
    return fp.tell() if transfer_syntax == _DEFLATED_TS else None


def _read_dicom(data: bytes, limits: Limits) -> tuple[Any, str | None]:
    """Parse the dataset; also return the stored transfer syntax when it was deflated."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset
    from pydicom.uid import ExplicitVRLittleEndian

    dataset_start = _deflated_dataset_offset(data)
    if dataset_start is not None:
        # pydicom would zlib.decompress() the whole stream unbounded: inflate it ourselves with
        # a hard cap (4 bytes per allowed pixel plus room for the header).
        cap = limits.max_pixels * 4 + 16 * 1024 * 1024
        inflated = inflate_prefix(data[dataset_start:], cap + 1, wbits=-zlib.MAX_WBITS)
        if len(inflated) > cap:
            raise ImageTooLarge(
                f"deflated DICOM data expands to more than {cap:,} bytes, over the limit"
            )
        try:
            ds = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
        except Exception as exc:
            raise CorruptImage(f"could not parse deflated DICOM: {_describe_exc(exc)}") from exc
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, None)
        return ds, _DEFLATED_TS
    try:
        return pydicom.dcmread(BytesIO(data), force=True), None
    except Exception as exc:
        raise CorruptImage(f"could not parse DICOM file: {_describe_exc(exc)}") from exc


def _dicom_int(ds: Any, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            if default is None:
                raise CorruptImage(f"DICOM header is missing {keyword}")
            return default
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):
            value = value[0]
        number = float(value)
        if not math.isfinite(number) or number != int(number):
            raise ValueError(value)
        return int(number)
    except ImagingError:
        raise
    except Exception as exc:
        raise CorruptImage(f"DICOM header has an invalid {keyword}") from exc


def _dicom_text(ds: Any, keyword: str, pattern: re.Pattern[str]) -> str | None:
    """A short, validated code string or UID; anything unexpected becomes None."""
    try:
        value = ds.get(keyword, None)
        if value is None:
            return None
        text = str(value).strip()
    except Exception:
        return None
    if len(text) > 64 or not pattern.match(text):
        return None
    return text


def _dicom_transfer_syntax(ds: Any, pixel_keyword: str) -> Any:
    """The dataset's transfer syntax UID, inferred from the encoding for native data."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import (
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None:
        file_meta = ds.file_meta = FileMetaDataset()
    raw = file_meta.get("TransferSyntaxUID", None)
    if raw:
        text = str(raw).strip("\x00 ")
        if len(text) > 64 or not _UID_RE.match(text):
            raise UnsupportedFormat("DICOM file has an invalid transfer syntax UID")
        return UID(text)
    # No transfer syntax: only native (uncompressed) pixel data can be decoded.
    elem = ds.get_item(pixel_keyword) if pixel_keyword in ds else None
    if elem is not None and (
        getattr(elem, "length", 0) == 0xFFFFFFFF or getattr(elem, "is_undefined_length", False)
    ):
        raise CorruptImage("DICOM file has encapsulated pixel data but no transfer syntax UID")
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit:
        uid = ImplicitVRLittleEndian
    elif little is False:
        uid = ExplicitVRBigEndian
    else:
        uid = ExplicitVRLittleEndian
    file_meta.TransferSyntaxUID = uid
    return uid


def _decode_dicom(data: bytes, limits: Limits, frame: int | None) -> DecodedImage:
    from pydicom.pixels import get_decoder, pixel_array
    from pydicom.pixels.utils import get_expected_length

    ds, stored_ts = _read_dicom(data, limits)

    pixel_keyword = next((k for k in _DICOM_PIXEL_KEYWORDS if k in ds), None)
    if pixel_keyword is None:
        raise CorruptImage("DICOM file has no pixel data")

    rows = _dicom_int(ds, "Rows")
    cols = _dicom_int(ds, "Columns")
    frames = _dicom_int(ds, "NumberOfFrames", 1) or 1
    samples = _dicom_int(ds, "SamplesPerPixel", 1)
    bits_allocated = _dicom_int(ds, "BitsAllocated")
    bits_stored = _dicom_int(ds, "BitsStored", bits_allocated)
    pixel_rep = _dicom_int(ds, "PixelRepresentation", 0)
    if frames < 1:
        raise CorruptImage(f"DICOM header has an invalid NumberOfFrames ({frames})")
    if samples not in (1, 3):
        raise UnsupportedFormat(f"DICOM images with {samples} samples per pixel are not supported")
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise CorruptImage(f"DICOM header has an invalid BitsAllocated ({bits_allocated})")
    if not 1 <= bits_stored <= bits_allocated:
        raise CorruptImage(f"DICOM header has an invalid BitsStored ({bits_stored})")
    if pixel_rep not in (0, 1):
        raise CorruptImage(f"DICOM header has an invalid PixelRepresentation ({pixel_rep})")
    # Only one frame is ever decoded (pydicom reads just that frame), so the cap is per frame:
    # a 512 x 512 x 300 enhanced CT is fine. The file itself is bounded by the upload cap, and a
    # NumberOfFrames the pixel data cannot hold is refused below (length or fragment checks).
    _check_size("DICOM frame", cols, rows, samples, limits)

    index = frames // 2 if frame is None else frame
    if not 0 <= index < frames:
        raise CorruptImage(
            f"frame {index} is out of range: this DICOM has {frames} frame(s) "
            f"(valid 0-{frames - 1})"
        )

    photometric = _dicom_text(ds, "PhotometricInterpretation", _CS_RE)
    if photometric is None:
        photometric = "MONOCHROME2" if samples == 1 else "RGB"
        ds.PhotometricInterpretation = photometric
    # Normalise the header elements the pixel pipeline relies on.
    ds.BitsStored = bits_stored
    ds.PixelRepresentation = pixel_rep
    ds.SamplesPerPixel = samples
    if "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames

    ts = _dicom_transfer_syntax(ds, pixel_keyword)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedFormat(
            f"DICOM transfer syntax {ts.name} ({ts}) is not supported"
            if ts.is_valid and ts.name != str(ts)
            else f"DICOM transfer syntax {ts} is not supported"
        ) from None
    if not decoder.is_available:
        raise UnsupportedFormat(f"no decoder is installed for DICOM transfer syntax {ts.name}")

    if not ts.is_compressed:
        try:
            expected = int(get_expected_length(ds, "bytes"))
            actual = len(ds[pixel_keyword].value or b"")
        except Exception as exc:
            raise CorruptImage(f"DICOM pixel data is unreadable: {_describe_exc(exc)}") from exc
        if actual < expected:
            raise CorruptImage(
                f"DICOM pixel data is truncated: expected {expected:,} bytes, found {actual:,}"
            )

    if ts.is_encapsulated:
        value = ds[pixel_keyword].value or b""
        if frames * 8 > len(value):  # every frame needs at least one 8-byte item
            raise CorruptImage(
                f"DICOM header says {frames:,} frames but the encapsulated pixel data holds "
                f"only {len(value):,} bytes"
            )
        _check_compressed_frame(ds, ts, pixel_keyword, index, frames, rows, cols, limits)

    try:
        arr = pixel_array(ds, index=index)
    except BaseException as exc:  # includes pyo3 PanicException from the Rust RLE decoder
        if isinstance(exc, _FATAL):
            raise
        raise CorruptImage(
            f"could not decode DICOM pixel data ({ts.name}): {_describe_exc(exc)}"
        ) from exc
    arr = np.asarray(arr)
    expected_shape: tuple[int, ...] = (rows, cols) if samples == 1 else (rows, cols, 3)
    if arr.shape != expected_shape:
        raise CorruptImage(
            f"decoded DICOM pixel data has shape {arr.shape}, expected {expected_shape}"
        )

    values: np.ndarray | None = None
    window: tuple[float, float] | None = None
    if samples == 3:
        pixels = _color_to_unit(arr, bits_stored)
        channels = 3
    elif photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = np.asarray(apply_color_lut(arr, ds))
        except Exception as exc:
            raise CorruptImage(f"DICOM palette is invalid: {_describe_exc(exc)}") from exc
        pixels = _color_to_unit(rgb, 8 if rgb.dtype == np.uint8 else 16)
        channels = 3
    else:
        values, pixels, window = _dicom_grayscale(arr, ds)
        if photometric == "MONOCHROME1":
            pixels = 1.0 - pixels
        channels = 1

    return DecodedImage(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        values=values,
        format="dicom",
        width=cols,
        height=rows,
        channels=channels,
        bit_depth=bits_stored,
        frames=frames,
        frame_index=index,
        modality=_dicom_text(ds, "Modality", _CS_RE),
        photometric=photometric,
        study_uid=_dicom_text(ds, "StudyInstanceUID", _UID_RE),
        series_uid=_dicom_text(ds, "SeriesInstanceUID", _UID_RE),
        sop_uid=_dicom_text(ds, "SOPInstanceUID", _UID_RE),
        window=window,
        transfer_syntax=stored_ts or str(ts),
    )


def _check_compressed_frame(
    ds: Any,
    ts: Any,
    pixel_keyword: str,
    index: int,
    frames: int,
    rows: int,
    cols: int,
    limits: Limits,
) -> None:
    """Check the size a JPEG / JPEG-LS / JPEG 2000 codestream claims before decoding it.

    The decoders allocate their output from the codestream's own header, not from Rows/Columns,
    so a small DICOM header wrapping a 60,000 x 60,000 codestream would otherwise be a pixel bomb.
    """
    from pydicom.encaps import get_frame
    from pydicom.uid import (
        JPEG2000TransferSyntaxes,
        JPEGLSTransferSyntaxes,
        JPEGTransferSyntaxes,
    )

    if ts in JPEG2000TransferSyntaxes:
        parse = _j2k_frame_size
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        parse = _jpeg_frame_size
    else:
        return  # RLE (output sized from Rows/Columns) or syntaxes without a decoder
    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        encoded = get_frame(
            ds[pixel_keyword].value, index, number_of_frames=frames, extended_offsets=extended
        )
    except Exception as exc:
        raise CorruptImage(
            f"DICOM encapsulated pixel data is corrupt ({ts.name}): {_describe_exc(exc)}"
        ) from exc
    size = parse(encoded)
    if size is None:
        raise CorruptImage(f"DICOM compressed frame has no readable {ts.name} header")
    width, height, components = size
    if not 1 <= components <= 4:
        raise CorruptImage(f"DICOM compressed frame has {components} components")
    if (width, height) != (cols, rows):
        raise CorruptImage(
            f"DICOM compressed frame is {width} x {height} but the header says {cols} x {rows}"
        )
    _check_size("DICOM compressed frame", width, height, components, limits)


_JPEG_SOF = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})  # + JPEG-LS SOF55


def _jpeg_frame_size(buf: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG or JPEG-LS SOF segment, else None."""
    if buf[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(buf)
    while pos + 4 <= end:
        if buf[pos] != 0xFF:
            return None
        marker = buf[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF
            return None
        (length,) = struct.unpack_from(">H", buf, pos + 2)
        if marker in _JPEG_SOF:
            if pos + 10 > end:
                return None
            height, width = struct.unpack_from(">HH", buf, pos + 5)
            return width, height, buf[pos + 9]
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k_frame_size(buf: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 SIZ segment (raw or JP2-boxed), else None."""
    offset = 0
    if buf.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n"):
        offset = 12
        while offset + 8 <= len(buf):
            (length,) = struct.unpack_from(">I", buf, offset)
            header = 8
            if length == 1 and offset + 16 <= len(buf):  # 64-bit XLBox
                (length,) = struct.unpack_from(">Q", buf, offset + 8)
                header = 16
            if buf[offset + 4 : offset + 8] == b"jp2c":
                offset += header
                break
            if length < header:
                return None
            offset += length
        else:
            return None
    if buf[offset : offset + 4] != b"\xff\x4f\xff\x51" or offset + 42 > len(buf):
        return None
    xsiz, ysiz, x_off, y_off = struct.unpack_from(">IIII", buf, offset + 8)
    (components,) = struct.unpack_from(">H", buf, offset + 40)
    return xsiz - x_off, ysiz - y_off, components


def _color_to_unit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype.kind == "f":
        arr = _finite(arr.astype(np.float32))
        return _rescale(arr, *_min_max(arr))
    scale = float(2 ** min(max(bits, 1), 16) - 1)
    if arr.size and int(arr.max()) > scale:  # mislabelled BitsStored
        scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else scale
    out = arr.astype(np.float32) * np.float32(1.0 / scale)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _dicom_grayscale(
    arr: np.ndarray, ds: Any
) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    """Modality LUT -> values; VOI LUT / first window / min-max -> pixels in [0, 1]."""
    from pydicom.pixels import apply_modality_lut

    try:
        modality = np.asarray(apply_modality_lut(arr, ds))
    except Exception as exc:
        raise CorruptImage(f"DICOM modality LUT/rescale is invalid: {_describe_exc(exc)}") from exc
    values = _finite(modality.astype(np.float32, copy=False))

    voi = _dicom_voi(values, ds)
    if voi is not None:
        return values, voi[0], voi[1]
    lo, hi = _min_max(values)
    return values, _rescale(values, lo, hi), ((lo + hi) / 2.0, hi - lo)


def _dicom_voi(values: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float] | None] | None:
    """Apply the file's VOI LUT or first window; None when absent or unusable (-> min-max).

    VOI LUT tables and SIGMOID windows go through pydicom's ``apply_voi``/``apply_windowing``.
    LINEAR and LINEAR_EXACT windows (by far the most common) use the same PS3.3 C.11.2.1.2
    formulas vectorised in float32 here: pydicom's boolean-mask implementation costs ~150 ms
    per megapixel, which matters for 3000 x 3000 radiographs.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    try:
        seq = ds.get("VOILUTSequence", None)
        if seq and seq[0].get("LUTDescriptor", None) and seq[0].get("LUTData", None) is not None:
            # LUT indices are integers; modality output is integral in practice.
            lut_input = np.rint(values).astype(np.int64)
            out = np.asarray(apply_voi(lut_input, ds, index=0), dtype=np.float32)
            lo, hi = _voi_lut_range(seq[0], ds)
            if hi > lo:
                return _rescale(out, lo, hi), None
    except Exception:  # noqa: S110 - an unusable VOI LUT falls back to the window / min-max
        pass
    try:
        if "WindowCenter" not in ds or "WindowWidth" not in ds:
            return None
        center = _first_float(ds["WindowCenter"].value)
        width = _first_float(ds["WindowWidth"].value)
        if not (math.isfinite(center) and math.isfinite(width) and width > 0):
            return None
        function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function == "LINEAR_EXACT":
            pixels = _linear_window(values, center, width)
        elif function == "SIGMOID":
            out = np.asarray(apply_windowing(values, ds, index=0))
            # The output range of apply_windowing is [y_min, y_max] of the rescaled stored
            # range; recover it by windowing the two extremes.
            y_lo, y_hi = (
                float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
            )
            if not (math.isfinite(y_lo) and math.isfinite(y_hi)) or y_lo == y_hi:
                return None
            pixels = _rescale(out, y_lo, y_hi) if y_hi > y_lo else 1.0 - _rescale(out, y_hi, y_lo)
        else:  # LINEAR (the default; unknown functions are treated as LINEAR)
            if width < 1:
                return None
            pixels = _linear_window(values, center - 0.5, width - 1.0)
        return pixels, (center, width)
    except Exception:
        return None


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """``(x - center) / width + 0.5`` clipped to [0, 1]; ``width == 0`` is a threshold."""
    if width <= 0:
        return (values > center).astype(np.float32)
    out = (values - np.float32(center)) * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _first_float(value: Any) -> float:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0]
    return float(value)


def _voi_lut_range(item: Any, ds: Any) -> tuple[float, float]:
    lut = item.LUTData
    if isinstance(lut, bytes):
        little = True
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID", None) if meta is not None else None
        if ts is not None and str(ts) == "1.2.840.10008.1.2.2":
            little = False
        table = np.frombuffer(lut[: len(lut) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        table = np.asarray(lut if isinstance(lut, list | tuple) else [lut], dtype=np.float64)
    if table.size == 0:
        return 0.0, 0.0
    return float(table.min()), float(table.max())


# --------------------------------------------------------------------------- NIfTI


@dataclass(frozen=True)
class _NiftiHeader:
    version: int
    shape: tuple[int, ...]
    dtype_code: int
    bytes_per_voxel: int
    vox_offset: int


def _nifti_slice(
    data: bytes,
    compressed: bool,
    hdr: _NiftiHeader,
    spatial: tuple[int, int, int],
    dtype: np.dtype,
    axis: int,
    index: int,
) -> np.ndarray:
    """Voxel slice `index` along stored `axis` of the first 3D volume, in stored order (2D).

    Voxels are stored x fastest, then y, then z. A .nii is already in memory: the slice is a
    strided view of it. A .nii.gz is inflated one z-plane at a time and only as far as needed
    (through plane `index` for axis 2; all planes for axes 0 and 1), so memory holds one plane
    and the slice, never the volume, and a gzip bomb cannot inflate past the volume."""
    nx, ny, nz = spatial
    plane_bytes = nx * ny * dtype.itemsize
    if not compressed:
        needed = hdr.vox_offset + plane_bytes * nz
        if len(data) < needed:
            raise CorruptImage(
                f"NIfTI voxel data is truncated: expected {needed:,} bytes, found {len(data):,}"
            )
        vol = np.frombuffer(data, dtype, count=nx * ny * nz, offset=hdr.vox_offset)
        vol = vol.reshape((nx, ny, nz), order="F")
        picked: list[slice | int] = [slice(None)] * 3
        picked[axis] = index
        return np.array(vol[tuple(picked)])  # a strided view, copied: only the slice
    last = index if axis == 2 else nz - 1
    out = np.empty((nx, ny) if axis == 2 else (ny if axis == 0 else nx, nz), dtype)
    for z, plane in _inflate_planes(data, hdr.vox_offset, plane_bytes, last + 1):
        grid = np.frombuffer(plane, dtype).reshape((nx, ny), order="F")
        if axis == 2:
            out[:] = grid
        elif axis == 1:
            out[:, z] = grid[:, index]
        else:
            out[:, z] = grid[index, :]
    return out


def _inflate_planes(
    data: bytes, offset: int, plane_bytes: int, count: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (z, plane) for the first `count` planes of `plane_bytes` each, which start `offset`
    bytes into the gzip stream `data`; only about one plane and one inflated chunk are held."""
    buf = bytearray()
    skip, z = offset, 0
    step = min(_INFLATE_PLANE_CHUNK, max(plane_bytes, 1 << 16))
    for chunk in inflate_chunks(data, wbits=16 + zlib.MAX_WBITS, step=step):
        buf += chunk
        if skip:
            if len(buf) < skip:
                continue
            del buf[:skip]
            skip = 0
        while len(buf) >= plane_bytes and z < count:
            yield z, bytes(buf[:plane_bytes])
            del buf[:plane_bytes]
            z += 1
        if z >= count:
            return
    raise CorruptImage(f"NIfTI voxel data is truncated: the stream ends in plane {z} of {count}")


def _parse_nifti_header(head: bytes) -> _NiftiHeader:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        version, size = 1, 348
    elif len(head) >= 540 and head[4:12] in (b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n"):
        version, size = 2, 540
    else:
        raise CorruptImage("NIfTI header is truncated")
    endian = "<" if struct.unpack_from("<i", head)[0] == size else ">"
    if version == 1:
        dims = struct.unpack_from(endian + "8h", head, 40)
        dtype_code = struct.unpack_from(endian + "h", head, 70)[0]
        vox_offset_f = struct.unpack_from(endian + "f", head, 108)[0]
        if not math.isfinite(vox_offset_f):
            raise CorruptImage("NIfTI header has an invalid vox_offset")
        vox_offset = int(vox_offset_f)
        single_file = head[344:348] == b"n+1\x00"
    else:
        dims = struct.unpack_from(endian + "8q", head, 16)
        dtype_code = struct.unpack_from(endian + "h", head, 12)[0]
        vox_offset = struct.unpack_from(endian + "q", head, 168)[0]
        single_file = head[4:8] == b"n+2\x00"
    if not single_file:
        raise UnsupportedFormat(
            "NIfTI header-only file (.hdr): its image data is in a separate .img file; "
            "upload a single-file .nii or .nii.gz"
        )
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise CorruptImage(f"NIfTI header has an invalid number of dimensions ({ndim})")
    shape = tuple(int(d) for d in dims[1 : ndim + 1])
    if any(d < 1 for d in shape):
        raise CorruptImage(f"NIfTI header has invalid dimensions {shape}")
    if ndim < 2:
        raise CorruptImage("NIfTI image is 1-dimensional; a 2D or 3D image is needed")
    if dtype_code in _NIFTI_UNSUPPORTED:
        raise UnsupportedFormat(f"NIfTI datatype {_NIFTI_UNSUPPORTED[dtype_code]} is not supported")
    if dtype_code not in _NIFTI_DTYPES:
        raise CorruptImage(f"NIfTI header has an unknown datatype code {dtype_code}")
    if not size + 4 <= vox_offset <= _MAX_NIFTI_VOX_OFFSET:
        raise CorruptImage(f"NIfTI header has an invalid vox_offset ({vox_offset})")
    return _NiftiHeader(version, shape, dtype_code, _NIFTI_DTYPES[dtype_code][1], vox_offset)


def _decode_nifti(data: bytes, limits: Limits, frame: int | None) -> DecodedImage:
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    compressed = data[:2] == GZIP_MAGIC
    head = gunzip_prefix(data, 540) if compressed else data[:540]
    hdr = _parse_nifti_header(head)

    spatial = (*hdr.shape, 1, 1)[:3]
    nx, ny, nz = spatial
    if max(spatial) > limits.max_dimension:
        raise ImageTooLarge(
            f"NIfTI volume is {nx} x {ny} x {nz} voxels; the largest side allowed is "
            f"{limits.max_dimension:,}"
        )
    if nx * ny * nz > limits.max_volume_voxels:
        raise ImageTooLarge(
            f"NIfTI volume is {nx} x {ny} x {nz} = {nx * ny * nz:,} voxels, over the limit of "
            f"{limits.max_volume_voxels:,}"
        )

    klass = nib.Nifti1Header if hdr.version == 1 else nib.Nifti2Header
    try:
        header = klass.from_fileobj(BytesIO(head))
        affine = header.get_best_affine()
        dtype = np.dtype(header.get_data_dtype())
        slope, inter = header.get_slope_inter()
    except Exception as exc:
        raise CorruptImage(f"could not parse NIfTI header: {_describe_exc(exc)}") from exc
    if dtype.itemsize != hdr.bytes_per_voxel:
        raise CorruptImage(f"NIfTI header has an inconsistent datatype ({dtype})")

    # Reorient to the closest canonical (RAS+) orientation, reading only the chosen slice.
    ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    try:
        found = io_orientation(affine)
        if np.isfinite(found).all() and (len(hdr.shape) >= 3 or found[2, 0] == 2):
            ornt = found
    except Exception:  # noqa: S110 - a degenerate affine keeps the stored (voxel) orientation
        pass
    in_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    n_slices = spatial[in_axis]
    index = n_slices // 2 if frame is None else frame
    if not 0 <= index < n_slices:
        raise CorruptImage(
            f"slice {index} is out of range: this volume has {n_slices} slice(s) "
            f"(valid 0-{n_slices - 1})"
        )
    side = [d for axis, d in enumerate(spatial) if axis != in_axis]
    _check_size("NIfTI slice", side[0], side[1], 1, limits)
    source_index = index if ornt[in_axis, 1] > 0 else n_slices - 1 - index

    # Only the first 3D volume is read (4D+: the first time point), one z-plane at a time.
    raw = _nifti_slice(data, compressed, hdr, (nx, ny, nz), dtype, in_axis, source_index)
    if slope is not None:
        raw = raw.astype(np.float64) * slope + (inter or 0.0)
    chunk = np.expand_dims(raw, in_axis)
    oriented = apply_orientation(chunk, ornt)  # RAS+: (x, y, 1)
    ras_slice = oriented[:, :, 0]
    values = _finite(np.rot90(ras_slice).astype(np.float32))  # anterior up
    values = np.ascontiguousarray(values)

    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if not hi > lo:
        lo, hi = _min_max(values)
    pixels = _rescale(values, lo, hi)

    height, width = values.shape
    return DecodedImage(
        pixels=pixels,
        values=values,
        format="nifti",
        width=width,
        height=height,
        channels=1,
        bit_depth=hdr.bytes_per_voxel * 8,
        frames=n_slices,
        frame_index=index,
        modality=None,
        photometric=None,
        study_uid=None,
        series_uid=None,
        sop_uid=None,
        window=None,
        transfer_syntax=None,
    )
