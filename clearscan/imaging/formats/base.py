"""What every format decoder shares: the decoded image type, the decoder contract, and the
small numeric helpers that map raw samples to display values in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clearscan.imaging.limits import Limits
from clearscan.imaging.spacing import PixelSpacing

__all__ = [
    "FATAL",
    "DecodedImage",
    "FormatDecoder",
    "describe_exc",
    "finite",
    "min_max",
    "rescale",
]

_MAX_MESSAGE = 200

# Exceptions that always propagate. Decoders catch BaseException otherwise: Rust decoders
# (pylibjpeg-rle via pyo3) raise PanicException, which is not an Exception subclass.
FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


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
    frames: int = 1
    frame_index: int = 0
    # DICOM only (None for the other formats)
    modality: str | None = None
    photometric: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    window: tuple[float, float] | None = None
    transfer_syntax: str | None = None
    # the memory decoding it was counted to need (clearscan.imaging.limits.decoded_bytes)
    decoded_bytes: int = 0
    # physical pixel size (DICOM, NIfTI) and where it came from; None: unknown (PNG, JPEG)
    spacing: PixelSpacing | None = None


class FormatDecoder(Protocol):
    """The contract of ``decode`` in each module of :mod:`clearscan.imaging.formats`.

    ``data`` has already been sniffed as this module's format. The decoder checks ``limits``
    before allocating pixels, picks ``frame`` (a DICOM frame or NIfTI slice; ``None`` for the
    middle one) and raises only :class:`~clearscan.imaging.errors.ImagingError` subclasses for
    bad input.
    """

    def __call__(self, data: bytes, *, limits: Limits, frame: int | None) -> DecodedImage: ...


def describe_exc(exc: BaseException, limit: int = _MAX_MESSAGE) -> str:
    """A one-line description of a third-party decoder's exception, at most ``limit`` long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def finite(arr: np.ndarray) -> np.ndarray:
    """Replace NaN/inf by the finite minimum/maximum (background) so outputs stay finite."""
    mask = np.isfinite(arr)
    if mask.all():
        return arr
    if not mask.any():
        return np.zeros_like(arr)
    lo = arr[mask].min()
    hi = arr[mask].max()
    return np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)


def rescale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 1] (clipped), as float32; constant images map to 0."""
    out = np.asarray(arr, dtype=np.float32)
    if not hi > lo:
        return np.zeros(out.shape, dtype=np.float32)
    out = (out - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def min_max(arr: np.ndarray) -> tuple[float, float]:
    return float(arr.min()), float(arr.max())
