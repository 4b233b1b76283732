"""PNG and JPEG uploads, decoded with Pillow.

The image size and mode are read by Pillow's lazy ``Image.open`` and checked against the limits
before any pixels are loaded: the pixel count, and the bytes decoding will hold (Pillow's image
memory for that mode, the conversions and array copies :func:`_pil_pixels` makes, the float32
output); Pillow's own decompression-bomb guard is turned into an error as well. Only the
first frame of an animated PNG is used, and a JPEG's EXIF orientation is applied.
"""

from __future__ import annotations

import contextlib
import warnings
from io import BytesIO
from typing import Any

import numpy as np

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, UnsupportedFormat
from clearscan.imaging.formats.base import DecodedImage, describe_exc, finite, min_max, rescale
from clearscan.imaging.limits import Limits, check_bytes, check_size, decoded_bytes
from clearscan.imaging.sniff import JPEG_SOI, PNG_SIGNATURE

__all__ = ["decode"]


def decode(data: bytes, *, limits: Limits, frame: int | None = None) -> DecodedImage:
    """Decode a PNG or JPEG (told apart by their signatures) to float32 pixels in [0, 1]."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data.startswith(PNG_SIGNATURE):
        fmt = "png"
    elif data.startswith(JPEG_SOI):
        fmt = "jpeg"
    else:
        raise UnsupportedFormat("unsupported file type: neither a PNG nor a JPEG image")
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
        raise ImageTooLarge(f"{name} image is too large: {describe_exc(exc)}") from exc
    except UnidentifiedImageError as exc:
        raise CorruptImage(f"{name} header is corrupt or truncated") from exc
    except Exception as exc:
        raise CorruptImage(f"{name} header is corrupt: {describe_exc(exc)}") from exc

    with im:
        width, height = im.size
        check_size(f"{name} image", width, height, 1, limits)
        raw, out_channels = _raster_bytes(im.mode, fmt)
        need = decoded_bytes(width * height, raw_bytes_per_pixel=raw, channels=out_channels)
        check_bytes(f"{name} image ({width} x {height}, mode {im.mode})", need, limits)
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
                f"{name} image is truncated or corrupt: {describe_exc(exc)}"
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
        decoded_bytes=need,
    )


# Pillow's image memory per pixel by mode: one byte for 1/L/P, two for 16-bit grayscale, four for
# 32-bit grayscale and every multi-band mode (Pillow stores those in 32-bit pixels).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_GRAY_OUT = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _raster_bytes(mode: str, fmt: str) -> tuple[int, int]:
    """(bytes per pixel held besides the float32 output, output channels) for a Pillow mode, as
    :func:`_pil_pixels` converts it: the Pillow image, any converted image (RGBA for palettes with
    transparency, L or RGB), the integer array copied out of it, and for 32-bit modes the float32
    temporaries of their scaling. Palettes count as colour (the worst case)."""
    own = _PIL_BYTES.get(mode, 4)
    if fmt == "jpeg":
        own *= 2  # the EXIF-transposed copy
    if mode in ("I", "F"):
        return own + 4 + 4, 1  # the array and one float32 temporary
    if mode.startswith("I;16"):
        return own + 2, 1
    if mode == "L":
        return own + 1, 1
    if mode in _GRAY_OUT:  # 1, LA, La -> L
        return own + 1 + 1, 1
    if mode == "RGB":
        return own + 3, 3
    if mode in ("P", "PA"):
        return own + 4 + 4 + 3, 3  # -> RGBA -> RGB, then the array
    return own + 4 + 3, 3  # RGBA/RGBX/CMYK/YCbCr/LAB/... -> RGB, then the array


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
        arr = finite(np.asarray(im, dtype=np.float32))
        return rescale(arr, *min_max(arr)), 1
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
