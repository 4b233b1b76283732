"""Secondary Capture Image of an upload that had no DICOM source (a PNG or JPEG), so that the
Segmentation and the Structured Report have an image to reference."""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from clearscan.dicom.outputs import MANUFACTURER, DicomOutputError

__all__ = ["secondary_capture"]


def secondary_capture(
    pixels: np.ndarray,
    *,
    patient_id: str = "",
    patient_name: str = "",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_number: int = 1,
    instance_number: int = 1,
    study_id: str = "",
    accession_number: str = "",
    pixel_spacing: tuple[float, float] | None = None,
    series_description: str | None = None,
) -> Dataset:
    """A Secondary Capture Image (SOP class 1.2.840.10008.5.1.4.1.1.7) holding ``pixels``.

    ``pixels``: ``(H, W)`` ``uint8`` or ``uint16`` grayscale (stored MONOCHROME2 with 8 or 16
    bits) or ``(H, W, 3)`` ``uint8`` RGB. ``patient_id`` / ``patient_name`` default to empty (the
    product keeps no identifiers); pass a pseudonymous key if one exists. UIDs not given are new.
    ``pixel_spacing`` (row, column spacing in mm), when known, is recorded as Pixel Spacing.
    The image has no frame of reference and no patient orientation (both unknown for a PNG).
    """
    arr = np.asarray(pixels)
    if arr.ndim == 2 and arr.dtype in (np.uint8, np.uint16):
        photometric, bits = "MONOCHROME2", 8 * arr.dtype.itemsize
    elif arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        photometric, bits = "RGB", 8
    else:
        raise DicomOutputError(
            "secondary capture needs (H, W) uint8/uint16 grayscale or (H, W, 3) uint8 RGB "
            f"pixels, got shape {arr.shape} of {arr.dtype}"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DicomOutputError("secondary capture needs a non-empty image")
    kwargs: dict[str, Any] = {}
    if series_description:
        kwargs["series_description"] = series_description
    sc: Any = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(arr),
        photometric_interpretation=photometric,
        bits_allocated=bits,
        coordinate_system="PATIENT",
        study_instance_uid=study_instance_uid or hd.UID(),
        series_instance_uid=series_instance_uid or hd.UID(),
        sop_instance_uid=sop_instance_uid or hd.UID(),
        series_number=series_number,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_id=patient_id,
        patient_name=patient_name,
        patient_birth_date="",
        patient_sex="",
        accession_number=accession_number,
        study_id=study_id,
        referring_physician_name="",
        pixel_spacing=pixel_spacing,
        # highdicom insists on an orientation for the PATIENT system; it is unknown for an
        # upload, so the type 2 attribute is emptied below.
        patient_orientation=("L", "F"),
        **kwargs,
    )
    sc.PatientOrientation = None
    sc.BurnedInAnnotation = "NO"
    return sc
