"""DICOM uploads, decoded with pydicom and its pixel-data plugins.

Only the image-pixel-module elements, the modality and the study/series/instance UIDs are read:
patient identifiers never reach messages or metadata. The header's dimensions are checked before
any pixels are decoded, and so is the size a compressed frame's codestream claims (decoders size
their output from it). Deflated datasets are inflated here with a cap, never by pydicom.

Only the chosen frame is decoded. Compressed frames go through pydicom's decoding plugins one at
a time, in the order of :data:`PLUGIN_ORDER`: what one decoder refuses (pylibjpeg's libjpeg
rejects some valid 12-bit JPEG Extended streams) another may read, with GDCM last as the
fallback (see :mod:`clearscan.imaging.formats.dicom_gdcm`).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import numpy as np

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, ImagingError, UnsupportedFormat
from clearscan.imaging.formats import dicom_gdcm
from clearscan.imaging.formats.base import (
    FATAL,
    DecodedImage,
    describe_exc,
    finite,
    min_max,
    rescale,
)
from clearscan.imaging.formats.codestream import j2k_frame_size, jpeg_frame_size
from clearscan.imaging.inflate import inflate_prefix
from clearscan.imaging.limits import Limits, check_bytes, check_size, decoded_bytes
from clearscan.imaging.spacing import dicom_spacing

__all__ = ["PLUGIN_ORDER", "decode", "read_dataset"]

_DEFLATED_TS = "1.2.840.10008.1.2.1.99"
_DICOM_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CS_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
# Decoding plugins are tried one at a time in this order; a plugin a newer pydicom adds comes
# before GDCM, which is the fallback.
PLUGIN_ORDER = ("pylibjpeg", "pyjpegls", "pillow", "pydicom", dicom_gdcm.PLUGIN)
_MAX_PLUGIN_MESSAGE = 120  # per plugin, when every plugin refuses a frame
_PYDICOM_ALL_FAILED = "Unable to decode as exceptions were raised by all available plugins:"


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
            f"DICOM file meta information is unreadable: {describe_exc(exc)}"
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
            raise CorruptImage(f"could not parse deflated DICOM: {describe_exc(exc)}") from exc
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, None)
        return ds, _DEFLATED_TS
    try:
        return pydicom.dcmread(BytesIO(data), force=True), None
    except Exception as exc:
        raise CorruptImage(f"could not parse DICOM file: {describe_exc(exc)}") from exc


def read_dataset(data: bytes, limits: Limits) -> Any:
    """The parsed dataset (a deflated one inflated under the cap, its transfer syntax then
    Explicit VR Little Endian); CorruptImage / ImageTooLarge otherwise. For de-identification
    (:mod:`clearscan.imaging.deid`), which rewrites the header and keeps the pixel data."""
    return _read_dicom(data, limits)[0]


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


def decode(data: bytes, *, limits: Limits, frame: int | None = None) -> DecodedImage:
    """Decode one frame (``frame``; by default the middle one) of a DICOM image."""
    from pydicom.pixels import get_decoder
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
    check_size("DICOM frame", cols, rows, samples, limits)

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
    dicom_gdcm.register()
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
    need = _decoded_bytes(ts, rows, cols, samples, bits_allocated, frames, photometric)
    check_bytes(
        f"DICOM image ({cols} x {rows}, {samples} sample(s) of {bits_allocated} bits, "
        f"{frames} frame(s))",
        need,
        limits,
    )

    if not ts.is_compressed:
        try:
            expected = int(get_expected_length(ds, "bytes"))
            actual = len(ds[pixel_keyword].value or b"")
        except Exception as exc:
            raise CorruptImage(f"DICOM pixel data is unreadable: {describe_exc(exc)}") from exc
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

    arr = _decode_frame(ds, ts, decoder.available_plugins if ts.is_encapsulated else (), index)
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
            raise CorruptImage(f"DICOM palette is invalid: {describe_exc(exc)}") from exc
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
        decoded_bytes=need,
        spacing=dicom_spacing(ds),
    )


def _decoded_bytes(
    ts: Any, rows: int, cols: int, samples: int, bits: int, frames: int, photometric: str
) -> int:
    """The memory decoding one frame holds, from the header (clearscan.imaging.limits): native
    pixel data of every frame as the dataset holds it (Rows x Columns x SamplesPerPixel x
    NumberOfFrames x BitsAllocated / 8), the decoded frame, and for grayscale the float64 modality
    LUT output, a float32 window temporary and the float32 values; for palette colour the RGB
    lookup output."""
    sample_bytes = max(bits // 8, 1)
    raw: float = samples * sample_bytes  # the decoded frame
    if not ts.is_encapsulated:
        raw += frames * samples * bits / 8  # the pixel data element, every frame
    colour = samples == 3 or photometric == "PALETTE COLOR"
    if photometric == "PALETTE COLOR":
        raw += 3 * 2
    elif not colour:
        raw += 8 + 4
    return decoded_bytes(
        rows * cols, raw_bytes_per_pixel=raw, channels=3 if colour else 1, values=not colour
    )


def _decode_frame(ds: Any, ts: Any, plugins: Sequence[str], index: int) -> np.ndarray:
    """Decode frame ``index``, trying each available plugin (``plugins``) in turn.

    Native (uncompressed) data has no plugins and is read directly. Every plugin's failure,
    including a Rust panic (a BaseException), is collected; only when all fail is the frame
    refused, naming each plugin's reason.
    """
    from pydicom.pixels import pixel_array

    ranked = sorted(plugins, key=_plugin_rank) or [""]
    failures: list[str] = []
    for plugin in ranked:
        try:
            return np.asarray(pixel_array(ds, index=index, decoding_plugin=plugin))
        except BaseException as exc:  # includes pyo3 PanicException from the Rust RLE decoder
            if isinstance(exc, FATAL):
                raise
            failures.append(_failure(plugin, exc))
    raise CorruptImage(f"could not decode DICOM pixel data ({ts.name}): {'; '.join(failures)}")


def _failure(plugin: str, exc: BaseException) -> str:
    """``plugin: reason``, without pydicom's "all plugins failed" wrapper around one plugin."""
    if not plugin:
        return describe_exc(exc)
    text = " ".join(str(exc).split())
    for prefix in (_PYDICOM_ALL_FAILED, f"{plugin}: "):
        text = text.removeprefix(prefix).lstrip()
    return f"{plugin}: {describe_exc(RuntimeError(text), limit=_MAX_PLUGIN_MESSAGE)}"


def _plugin_rank(plugin: str) -> tuple[int, str]:
    if plugin in PLUGIN_ORDER:
        return 2 * PLUGIN_ORDER.index(plugin), plugin
    return 2 * PLUGIN_ORDER.index(dicom_gdcm.PLUGIN) - 1, plugin  # unknown: just before GDCM


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
        parse = j2k_frame_size
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        parse = jpeg_frame_size
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
            f"DICOM encapsulated pixel data is corrupt ({ts.name}): {describe_exc(exc)}"
        ) from exc
    size = parse(encoded)
    if size is None:
        raise CorruptImage(f"DICOM compressed frame has no readable {ts.name} header")
    width, height, components, precision = size
    if not 1 <= components <= 4:
        raise CorruptImage(f"DICOM compressed frame has {components} components")
    if precision is not None and not 2 <= precision <= 16:  # JPEG and JPEG-LS allow 2-16 bits
        raise CorruptImage(f"DICOM compressed frame claims {precision}-bit samples")
    if (width, height) != (cols, rows):
        raise CorruptImage(
            f"DICOM compressed frame is {width} x {height} but the header says {cols} x {rows}"
        )
    check_size("DICOM compressed frame", width, height, components, limits)


def _color_to_unit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype.kind == "f":
        arr = finite(arr.astype(np.float32))
        return rescale(arr, *min_max(arr))
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
        raise CorruptImage(f"DICOM modality LUT/rescale is invalid: {describe_exc(exc)}") from exc
    values = finite(modality.astype(np.float32, copy=False))

    voi = _dicom_voi(values, ds)
    if voi is not None:
        return values, voi[0], voi[1]
    lo, hi = min_max(values)
    return values, rescale(values, lo, hi), ((lo + hi) / 2.0, hi - lo)


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
                return rescale(out, lo, hi), None
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
            pixels = rescale(out, y_lo, y_hi) if y_hi > y_lo else 1.0 - rescale(out, y_hi, y_lo)
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
