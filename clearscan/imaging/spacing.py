"""The physical size of an image's pixels, and where it came from.

DICOM (PS3.3 C.7.6.2.1, C.8.11.7, C.8.7.1.1): ``PixelSpacing`` is the spacing in the patient (or
a calibrated plane) and is used when present; projection radiographs (DX, CR, XA, RF, MG) often
carry only ``ImagerPixelSpacing``, the spacing at the detector's front plane, which overstates
the size of what lies in the patient by the geometric magnification: it is divided by
``EstimatedRadiographicMagnificationFactor`` where given, else by ``DistanceSourceToDetector /
DistanceSourceToPatient`` (the isocentre for XA), else used as it is and said so. Enhanced
multi-frame objects keep ``PixelSpacing`` in the shared functional groups' Pixel Measures.

NIfTI: the voxel sizes of the two in-plane axes of the oriented slice, in millimetres when the
header's spatial unit says metres, millimetres or micrometres; with an unknown unit there is no
spacing (figures stay in pixels).

The reply of an analysis names the source, so a reader knows what a millimetre means."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["PixelSpacing", "dicom_spacing", "nifti_spacing"]

_MAX_MM = 100.0  # a pixel larger than 10 cm is a broken header, not an image


@dataclass(frozen=True)
class PixelSpacing:
    """Millimetres between the centres of adjacent rows (`row_mm`, vertical) and adjacent
    columns (`col_mm`, horizontal); `source` says which attribute they come from."""

    row_mm: float
    col_mm: float
    source: str

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.col_mm

    @property
    def isotropic(self) -> bool:
        return math.isclose(self.row_mm, self.col_mm, rel_tol=1e-3)

    def to_json(self) -> dict[str, Any]:
        return {
            "row_mm": round(self.row_mm, 6),
            "col_mm": round(self.col_mm, 6),
            "source": self.source,
        }


def _pair(value: Any) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) and 0 < v <= _MAX_MM for v in (row, col)):
        return None
    return row, col


def _get(ds: Any, keyword: str) -> Any:
    """The attribute's value, or None when it is absent or cannot be read (a malformed value
    makes no spacing, never an error: spacing is optional metadata)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _number(ds: Any, keyword: str) -> float | None:
    try:
        value = float(_get(ds, keyword))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def dicom_spacing(ds: Any) -> PixelSpacing | None:
    """The spacing of a DICOM dataset's pixels (see the module's docstring); None without a
    usable one."""
    pair = _pair(_get(ds, "PixelSpacing"))
    if pair is not None:
        return PixelSpacing(*pair, source="PixelSpacing")
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    try:
        pair = _pair(shared[0].PixelMeasuresSequence[0].PixelSpacing) if shared else None
    except Exception:  # a malformed sequence: no spacing from it
        pair = None
    if pair is not None:
        return PixelSpacing(*pair, source="PixelSpacing (shared functional groups)")
    imager = _pair(_get(ds, "ImagerPixelSpacing"))
    if imager is None:
        return None
    factor = _number(ds, "EstimatedRadiographicMagnificationFactor")
    if factor is not None and 1.0 <= factor <= 10.0:
        return PixelSpacing(
            imager[0] / factor,
            imager[1] / factor,
            source="ImagerPixelSpacing / EstimatedRadiographicMagnificationFactor",
        )
    sid = _number(ds, "DistanceSourceToDetector")
    sod = _number(ds, "DistanceSourceToPatient")
    if sid is not None and sod is not None and sod <= sid <= 10 * sod:
        m = sid / sod
        return PixelSpacing(
            imager[0] / m,
            imager[1] / m,
            source="ImagerPixelSpacing / (DistanceSourceToDetector / DistanceSourceToPatient)",
        )
    return PixelSpacing(*imager, source="ImagerPixelSpacing (at the detector, not corrected)")


_NIFTI_UNIT_MM = {"mm": 1.0, "meter": 1000.0, "micron": 0.001}


def nifti_spacing(
    zooms: tuple[float, ...], unit: str, col_axis: int, row_axis: int
) -> PixelSpacing | None:
    """The in-plane spacing of a NIfTI slice: `zooms` of the stored axes, the header's spatial
    `unit` (nibabel's name), and which stored axes became the slice's columns and rows."""
    scale = _NIFTI_UNIT_MM.get(unit)
    if scale is None:
        return None
    try:
        pair = _pair((zooms[row_axis] * scale, zooms[col_axis] * scale))
    except IndexError:
        return None
    return None if pair is None else PixelSpacing(*pair, source="NIfTI pixdim")
