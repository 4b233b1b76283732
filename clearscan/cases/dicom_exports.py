"""A segmentation prediction as standard DICOM objects, for a PACS or a viewer: the Segmentation
(LABELMAP) of its label map referencing the analysed image, the Structured Report (TID 1500) of
its QCA measurements referencing both, and, for an upload that was not DICOM (PNG, JPEG, NIfTI),
the Secondary Capture image they reference.

Built on request from what the case keeps (the de-identified image, the label map, the
measurements) with UIDs derived from the prediction's id, so the same prediction always gives
the same objects: a PACS that receives them twice keeps one copy. A multi-frame source gets a
Segmentation with one frame per source frame, the analysed frame holding the map and the others
empty, so frame i of the SEG refers to frame i of the source."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image as PILImage

from clearscan import errors
from clearscan.cases.models import Case, Image, Prediction
from clearscan.imaging import Limits, decode
from clearscan.storage import BlobStore

__all__ = ["DicomExport", "Part", "export"]

Part = Literal["seg", "sr", "sc"]


class NoSuchExport(errors.NotFound):
    """The prediction has no such DICOM object (404): not a segmentation, no measurements, or a
    DICOM source (no secondary capture is made for it)."""


@dataclass(frozen=True)
class DicomExport:
    data: bytes
    filename: str


def _uid(prediction_id: str, what: str) -> str:
    """A UID of the 2.25 (UUID) root, the same for the same prediction and object."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, f'clearscan:{prediction_id}:{what}').int}"


def _label_map(blobs: BlobStore, pred: Prediction) -> np.ndarray:
    assert pred.mask_sha256 is not None
    with PILImage.open(io.BytesIO(blobs.get(pred.mask_sha256))) as im:
        return np.asarray(im, dtype=np.uint8)


def _source(
    blobs: BlobStore, case: Case, image: Image, pred: Prediction, limits: Limits
) -> tuple[Any, bool]:
    """The source dataset, and whether it was made here (a secondary capture)."""
    from pydicom import dcmread

    from clearscan.dicom import secondary_capture

    data = blobs.get(image.sha256)
    if image.format == "dicom":
        return dcmread(io.BytesIO(data)), False
    img = decode(data, limits=limits, frame=image.frame_index)
    pixels = img.pixels
    arr = (np.clip(pixels, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    spacing = img.spacing
    ds = secondary_capture(
        arr,
        patient_id=case.patient_key or "",
        study_instance_uid=_uid(pred.id, "study"),
        series_instance_uid=_uid(pred.id, "sc-series"),
        sop_instance_uid=_uid(pred.id, "sc"),
        pixel_spacing=None if spacing is None else (spacing.row_mm, spacing.col_mm),
        series_description="ClearScan analysed image",
    )
    return ds, True


def _frames(source: Any, image: Image, label_map: np.ndarray) -> np.ndarray:
    """The label map aligned with the source's frames."""
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames <= 1:
        return label_map
    out = np.zeros((frames, *label_map.shape), np.uint8)
    out[image.frame_index] = label_map
    return out


def export(
    *,
    blobs: BlobStore,
    case: Case,
    image: Image,
    pred: Prediction,
    part: Part,
    limits: Limits,
) -> DicomExport:
    """The prediction's `part` as DICOM Part 10 bytes; NoSuchExport when it has none. A
    non-DICOM image is decoded again under `limits` (the site's, which accepted it)."""
    from clearscan.dicom import measurement_report, segmentation, to_bytes

    if not pred.mask_sha256:
        raise NoSuchExport(f"prediction {pred.id} is not a segmentation: no DICOM objects")
    source, made_here = _source(blobs, case, image, pred, limits)
    short = pred.id[:8]
    if part == "sc":
        if not made_here:
            raise NoSuchExport(
                f"prediction {pred.id} analysed a DICOM image: the SEG and SR reference it"
            )
        return DicomExport(to_bytes(source), f"image-{short}.dcm")
    label_map = _label_map(blobs, pred)
    seg = segmentation(
        [source],
        _frames(source, image, label_map),
        list(pred.labels),
        algorithm_name=pred.model_name,
        algorithm_version=pred.model_version,
        series_instance_uid=_uid(pred.id, "seg-series"),
        sop_instance_uid=_uid(pred.id, "seg"),
    )
    if part == "seg":
        return DicomExport(to_bytes(seg), f"segmentation-{short}.dcm")
    qca = ((pred.details or {}).get("measurements") or {}).get("vessel-qca")
    if not qca:
        raise NoSuchExport(f"prediction {pred.id} has no measurements: no structured report")
    sr = measurement_report(
        [source],
        seg,
        qca,
        frame=image.frame_index + 1,
        algorithm_name=pred.model_name,
        algorithm_version=pred.model_version,
        series_instance_uid=_uid(pred.id, "sr-series"),
        sop_instance_uid=_uid(pred.id, "sr"),
    )
    return DicomExport(to_bytes(sr), f"report-{short}.dcm")
