"""Size caps on untrusted images, checked before any pixel buffer is allocated.

Two kinds of cap:

* shape caps (:func:`check_size`): the longest side and the pixels of one decoded image or slice;
* byte caps (:func:`check_bytes`): what decoding an image holds in memory at its peak, counted
  from the header before anything is decoded (:func:`decoded_bytes`). Colour channels, bit depth,
  the frames a DICOM dataset holds, and the float32 arrays the decoders and the inference
  preprocessing make all count: a 250 KB PNG of 8,000 x 8,000 RGB pixels is 64 M pixels but
  about 2 GB of memory, and is refused here. ``max_decoded_bytes`` caps one image;
  ``request_bytes_left`` (set per file by :meth:`Limits.for_request`) caps the files of one
  request together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clearscan.imaging.errors import CorruptImage, ImageTooLarge

__all__ = [
    "FLOAT32_COPIES",
    "Limits",
    "check_bytes",
    "check_size",
    "decoded_bytes",
    "megabytes",
]

MIB = 1024 * 1024
# float32 arrays of the output channels alive at the peak: the display/model pixels the decoder
# returns and the working copy the inference preprocessing makes from them
FLOAT32_COPIES = 2


@dataclass(frozen=True)
class Limits:
    """Caps checked before any pixels are decoded."""

    max_pixels: int = 64_000_000  # rows*cols(*samples) of the decoded image or slice
    max_dimension: int = 30_000  # any single side
    # voxels of a NIfTI volume (its first 3D volume): only one slice is kept in memory, but a
    # .nii.gz is decompressed up to that slice (or through, for sagittal/coronal storage)
    max_volume_voxels: int = 512_000_000
    # bytes decoding one image may hold at its peak (see decoded_bytes)
    max_decoded_bytes: int = 1024 * MIB
    # the same, for all the files of one request together
    max_request_decoded_bytes: int = 8192 * MIB
    # what is left of the request's budget for the next file; None: not part of a request
    request_bytes_left: int | None = None

    def for_request(self, used: int) -> Limits:
        """These limits for the next file of a request whose files so far counted ``used``."""
        return dataclasses.replace(
            self, request_bytes_left=max(self.max_request_decoded_bytes - used, 0)
        )


def megabytes(n: int) -> str:
    """``n`` bytes as MB (MiB) for messages: ``"1,024 MB"``, ``"0.25 MB"``."""
    mb = n / MIB
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:,.2g} MB"


def check_size(kind: str, width: int, height: int, count: int, limits: Limits) -> None:
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


def decoded_bytes(
    pixels: int,
    *,
    raw_bytes_per_pixel: float,
    channels: int,
    values: bool = False,
    extra: int = 0,
) -> int:
    """What decoding one image of ``pixels`` pixels holds in memory at its peak, in bytes.

    ``raw_bytes_per_pixel``: the decoding library's own buffers per output pixel (Pillow's image
    memory and the array copied out of it; a DICOM dataset's stored samples of every frame and the
    decoded frame; a NIfTI slice and its rescaled copy). ``channels``: 1 (grayscale) or 3 (RGB)
    float32 output channels, counted :data:`FLOAT32_COPIES` times. ``values``: a float32 array of
    modality values (DICOM grayscale, NIfTI) is kept as well. ``extra``: bytes held that do not
    scale with this image (a compressed plane buffer).
    """
    per_pixel = raw_bytes_per_pixel + 4 * channels * FLOAT32_COPIES + (4 if values else 0)
    return int(pixels * per_pixel) + extra


def check_bytes(kind: str, nbytes: int, limits: Limits) -> None:
    """Raise ImageTooLarge (413) naming the cap when decoding would hold ``nbytes`` bytes:
    over the per-image cap, or over what is left of the request's budget."""
    if nbytes > limits.max_decoded_bytes:
        raise ImageTooLarge(
            f"{kind} would need {megabytes(nbytes)} of memory to decode, over the limit of "
            f"{megabytes(limits.max_decoded_bytes)} per image (CLEARSCAN_MAX_DECODED_MB)"
        )
    left = limits.request_bytes_left
    if left is not None and nbytes > left:
        raise ImageTooLarge(
            f"{kind} would need {megabytes(nbytes)} of memory to decode; the files of one "
            f"request may need at most {megabytes(limits.max_request_decoded_bytes)} together "
            f"(CLEARSCAN_MAX_REQUEST_DECODED_MB) and {megabytes(left)} is left"
        )
