"""Render a :class:`~clearscan.imaging.decode.DecodedImage` to an 8-bit PNG, with window/level.

Two kinds of named presets exist:

* absolute windows, ``(center, width)`` in modality units, per modality (:data:`WINDOW_PRESETS`;
  CT in Hounsfield units). They only apply to images whose modality matches and that carry
  modality ``values`` (DICOM);
* percentile strategies (:data:`PERCENTILE_PRESETS`), ``(low %, high %)`` of the image's own
  values, for any grayscale image. MR intensities have no absolute scale, so these are the MR
  presets; they also work for CR/DX, NIfTI and grayscale PNG/JPEG.

``"default"`` always means the image as decoded (the file's own VOI LUT/window, else min-max).
An explicit ``window=(center, width)`` in modality units works for any grayscale image with
modality values.
"""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np

from clearscan.imaging.errors import ImagingError
from clearscan.imaging.formats.base import DecodedImage

__all__ = [
    "DEFAULT_PRESET",
    "PERCENTILE_PRESETS",
    "WINDOW_PRESETS",
    "apply_window",
    "available_presets",
    "render_png",
    "resolve_window",
]

DEFAULT_PRESET = "default"

#: Absolute window presets, ``(center, width)`` in modality units, keyed by DICOM Modality.
WINDOW_PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    "CT": {
        "lung": (-600.0, 1500.0),
        "mediastinum": (40.0, 400.0),
        "abdomen": (40.0, 350.0),
        "liver": (60.0, 160.0),
        "bone": (400.0, 1800.0),
        "brain": (40.0, 80.0),
        "subdural": (75.0, 215.0),
        "stroke": (40.0, 40.0),
    },
}

#: Percentile strategies, ``(low percentile, high percentile)`` of the image's own values.
PERCENTILE_PRESETS: dict[str, tuple[float, float]] = {
    "auto": (1.0, 99.0),
    "soft": (5.0, 95.0),
    "full": (0.0, 100.0),
}

_PNG_COMPRESS_LEVEL = 3  # zlib level: ~2x faster than 6 for ~10% larger output
_PERCENTILE_SAMPLE = 1_000_000  # percentiles are estimated on at most ~this many pixels


def available_presets(img: DecodedImage) -> list[str]:
    """Names of the presets that apply to ``img`` (``"default"`` first)."""
    if img.channels != 1:
        return [DEFAULT_PRESET]
    names = [DEFAULT_PRESET]
    if img.values is not None and img.modality:
        names.extend(WINDOW_PRESETS.get(img.modality.upper(), {}))
    names.extend(PERCENTILE_PRESETS)
    return names


def resolve_window(
    img: DecodedImage,
    *,
    preset: str | None = None,
    window: tuple[float, float] | None = None,
) -> tuple[float, float] | None:
    """The ``(center, width)`` that ``preset``/``window`` selects, or None for the default view.

    For images with modality ``values`` the window is in modality units, otherwise (grayscale
    PNG/JPEG percentile presets) in display units [0, 1].
    Raises :class:`ImagingError` (422) for an unknown preset or an invalid window.
    """
    if preset is not None and window is not None:
        raise ImagingError("give either a window preset or an explicit window, not both")
    if window is not None:
        if img.channels != 1:
            raise ImagingError("window/level applies to grayscale images only")
        if img.values is None:
            raise ImagingError(
                "an explicit window needs modality values (DICOM or NIfTI); use a preset"
            )
        try:
            center, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise ImagingError("window must be a (center, width) pair of numbers") from None
        if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
            raise ImagingError("window width must be a positive number and center finite")
        return center, width
    if preset is None or preset == DEFAULT_PRESET:
        return None
    if not isinstance(preset, str) or preset not in available_presets(img):
        shown = repr(preset)[:40]
        raise ImagingError(
            f"unknown window preset {shown} for this image; "
            f"available: {', '.join(available_presets(img))}"
        )
    if preset in PERCENTILE_PRESETS:
        return _percentile_window(_source(img), *PERCENTILE_PRESETS[preset])
    assert img.modality is not None  # guaranteed by available_presets
    return WINDOW_PRESETS[img.modality.upper()][preset]


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear window/level: ``center - width/2`` -> 0, ``center + width/2`` -> 1 (float32)."""
    width = max(float(width), 1e-12)
    out = (np.asarray(values, dtype=np.float32) - np.float32(center)) * np.float32(1.0 / width)
    out += np.float32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def render_png(
    img: DecodedImage,
    *,
    preset: str | None = None,
    window: tuple[float, float] | None = None,
    max_side: int | None = 2048,
) -> bytes:
    """Render ``img`` as an 8-bit grayscale (L) or RGB PNG, downscaled so no side exceeds
    ``max_side`` (aspect ratio kept; ``None`` keeps the full size)."""
    from PIL import Image

    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ImagingError("max_side must be a positive integer or None")
    win = resolve_window(img, preset=preset, window=window)
    if win is None:
        display = img.pixels
    else:
        display = apply_window(_source(img), *win)
        if img.values is not None and img.photometric == "MONOCHROME1":
            display = 1.0 - display

    arr8 = _to_uint8(display)
    pil = Image.fromarray(arr8)  # uint8 HxW -> "L", HxWx3 -> "RGB"
    width, height = pil.size
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pil = pil.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = BytesIO()
    pil.save(out, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return out.getvalue()


def _source(img: DecodedImage) -> np.ndarray:
    return img.values if img.values is not None else img.pixels


def _percentile_window(values: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    sample = values
    if values.size > _PERCENTILE_SAMPLE and values.ndim == 2:
        step = math.ceil(math.sqrt(values.size / _PERCENTILE_SAMPLE))
        sample = values[::step, ::step]
    if low_pct <= 0.0 and high_pct >= 100.0:
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(sample, (low_pct, high_pct)))
    width = high - low
    if not width > 0:
        width = max(abs(low) * 1e-6, 1e-6)  # constant image: render mid-gray
    return (low + high) / 2.0, width


def _to_uint8(display: np.ndarray) -> np.ndarray:
    scaled = np.multiply(display, 255.0, dtype=np.float32)
    scaled += 0.5
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.ascontiguousarray(scaled.astype(np.uint8))
