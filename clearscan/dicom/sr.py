"""Comprehensive SR with a TID 1500 Measurement Report of quantitative coronary angiography.

highdicom has no QCA template, so each stenosis is a TID 1410 Planar ROI measurement group
referencing the vessel segment of the Segmentation (``ReferencedSegmentationFrame``) and
carrying TID 300 measurements coded with SNOMED CT vessel measurement concepts and the DICOM
QA reference methods (CID 3465). The codes chosen, and why, are listed in
docs/dicom-outputs.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from clearscan.dicom.outputs import (
    MANUFACTURER,
    MODEL_NAME,
    SOFTWARE_VERSION,
    DicomOutputError,
    patient_and_study_copy,
)
from clearscan.dicom.seg import PRIVATE_SCHEME

__all__ = ["CODES", "UNITS", "measurement_report"]

#: The coded concepts of the report (documented in docs/dicom-outputs.md).
CODES: dict[str, Code] = {
    "procedure": codes.SCT.CoronaryAngiography,  # 33367005
    "finding": codes.SCT.Stenosis,  # 415582006
    "finding_site": codes.SCT.CoronaryArtery,  # 41801008
    "percent_stenosis": codes.SCT.LumenDiameterStenosis,  # 408715008
    "diameter": codes.SCT.VesselLumenDiameter,  # 397413000 (MLD and RVD)
    "minimum": codes.SCT.Minimum,  # 255605001, derivation of the MLD
    "mean": codes.SCT.Mean,  # 373098007, derivation of the proximal/distal mean
    "lesion_length": codes.SCT.StenoticLesionLength,  # 408716009
    "interpolated": codes.DCM.InterpolatedLocalReference,  # 122490
    "curve_fitted": codes.DCM.CurveFittedReference,  # 122489
    "mean_local": codes.DCM.MeanLocalReference,  # 122491
    "absent": codes.SCT.Absent,  # 272519000
}

#: UCUM units. Lengths in pixels use the UCUM annotation ``{pixel}`` (a dimensionless count).
UNITS: dict[str, Code] = {
    "%": Code("%", "UCUM", "percent"),
    "mm": Code("mm", "UCUM", "millimeter"),
    "px": Code("{pixel}", "UCUM", "pixel"),
}

_RVD_METHODS = {
    "interpolated": "interpolated",
    "interpolated_local": "interpolated",
    "curve_fitted": "curve_fitted",
    "fitted": "curve_fitted",
    "mean": "mean_local",
    "mean_local": "mean_local",
    "proximal_distal_mean": "mean_local",
}


def _number(stenosis: Mapping[str, Any], key: str, index: int) -> float:
    value = stenosis.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DicomOutputError(f"stenosis {index}: {key!r} must be a number, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise DicomOutputError(f"stenosis {index}: {key!r} is not finite")
    return number


def _rvd_method(name: object) -> Code:
    key = _RVD_METHODS.get(str(name).strip().lower()) if name is not None else "interpolated"
    if key is not None:
        return CODES[key]
    text = str(name).strip()[:64]
    return Code(text.upper()[:16] or "RVD", PRIVATE_SCHEME, text or "reference method")


def _seg_frame(seg: Dataset, sop_uid: str, frame: int | None, segment: int) -> int:
    """The number of the Segmentation frame derived from (source, frame) holding ``segment``."""
    binary = seg.SegmentationType != "LABELMAP"
    shared = seg.SharedFunctionalGroupsSequence[0]
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if binary:
            # one segment only: highdicom puts its identification in the shared groups
            ident = item.get("SegmentIdentificationSequence") or shared.get(
                "SegmentIdentificationSequence"
            )
            if not ident or int(ident[0].ReferencedSegmentNumber) != segment:
                continue
        for derivation in item.get("DerivationImageSequence", []):
            for ref in derivation.get("SourceImageSequence", []):
                if ref.ReferencedSOPInstanceUID != sop_uid:
                    continue
                if frame is None or int(ref.get("ReferencedFrameNumber", 1)) == frame:
                    return number
    raise DicomOutputError(
        f"the segmentation has no frame of segment {segment} for the referenced source image/frame"
    )


def measurement_report(
    source: Sequence[Dataset] | Dataset,
    seg: Dataset,
    measurements: Mapping[str, Any],
    *,
    frame: int = 1,
    segment_number: int = 1,
    algorithm_name: str = "ClearScan QCA",
    algorithm_version: str = "1",
    series_number: int = 200,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """A Comprehensive SR (``highdicom.sr.ComprehensiveSR``) of the QCA ``measurements``.

    ``source``: the image(s) the segmentation was made from. ``seg``: that Segmentation.
    ``measurements``: the measurement module's JSON object (``unit`` ``"mm"`` or ``"px"``,
    ``stenoses`` list). ``frame``: the 1-based source frame measured (in a multi-frame source;
    the image's position in a series of single-frame ones). ``segment_number``: the segment of
    the vessel measured. One TID 1410 group per stenosis; with none, one group holding the
    qualitative evaluation "Stenosis: Absent" for the vessel segment.
    """
    sources = [source] if isinstance(source, Dataset) else list(source)
    if not sources:
        raise DicomOutputError("no source image given")
    unit_name = measurements.get("unit")
    if unit_name not in ("mm", "px"):
        raise DicomOutputError(f"measurement unit must be 'mm' or 'px', got {unit_name!r}")
    stenoses = measurements.get("stenoses", [])
    if not isinstance(stenoses, Sequence) or isinstance(stenoses, (str, bytes)):
        raise DicomOutputError("'stenoses' must be a list")
    if not any(int(s.SegmentNumber) == segment_number for s in seg.SegmentSequence):
        raise DicomOutputError(f"the segmentation has no segment {segment_number}")

    multi = len(sources) == 1 and "NumberOfFrames" in sources[0]
    if multi:
        image = sources[0]
        frames = int(image.NumberOfFrames)
        if not 1 <= frame <= frames:
            raise DicomOutputError(f"frame {frame} is outside the source's 1..{frames}")
        image_frame: int | None = frame
    else:
        if not 1 <= frame <= len(sources):
            raise DicomOutputError(f"frame {frame} is outside the series' 1..{len(sources)}")
        image, image_frame = sources[frame - 1], None
    seg_frame = _seg_frame(seg, image.SOPInstanceUID, image_frame, segment_number)
    frame_numbers = None if image_frame is None else [image_frame]
    source_for_seg = hd.sr.SourceImageForSegmentation(
        image.SOPClassUID, image.SOPInstanceUID, frame_numbers
    )
    algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm_name, version=algorithm_version, family=codes.DCM.ArtificialIntelligence
    )
    site = hd.sr.FindingSite(CODES["finding_site"])
    length_unit = UNITS[unit_name]

    def referenced_segment() -> Any:
        return hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            frame_number=seg_frame,
            segment_number=segment_number,
            source_image=source_for_seg,
        )

    groups: list[Any] = []
    for index, stenosis in enumerate(stenoses, start=1):
        if not isinstance(stenosis, Mapping):
            raise DicomOutputError(f"stenosis {index} is not an object")
        items = [
            hd.sr.Measurement(
                name=CODES["percent_stenosis"],
                value=_number(stenosis, "percent_stenosis", index),
                unit=UNITS["%"],
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=CODES["diameter"],
                value=_number(stenosis, "mld", index),
                unit=length_unit,
                derivation=CODES["minimum"],
                algorithm_id=algorithm,
            ),
            hd.sr.Measurement(
                name=CODES["diameter"],
                value=_number(stenosis, "rvd", index),
                unit=length_unit,
                method=_rvd_method(stenosis.get("rvd_method")),
                algorithm_id=algorithm,
            ),
        ]
        if stenosis.get("rvd_proximal_distal_mean") is not None:
            items.append(
                hd.sr.Measurement(
                    name=CODES["diameter"],
                    value=_number(stenosis, "rvd_proximal_distal_mean", index),
                    unit=length_unit,
                    derivation=CODES["mean"],
                    method=CODES["mean_local"],
                    algorithm_id=algorithm,
                )
            )
        items.append(
            hd.sr.Measurement(
                name=CODES["lesion_length"],
                value=_number(stenosis, "lesion_length", index),
                unit=length_unit,
                algorithm_id=algorithm,
            )
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier=f"Stenosis {index}"
                ),
                referenced_segment=referenced_segment(),
                finding_type=CODES["finding"],
                finding_sites=[site],
                algorithm_id=algorithm,
                measurements=items,
            )
        )
    if not groups:
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier="No stenosis"
                ),
                referenced_segment=referenced_segment(),
                finding_type=CODES["finding"],
                finding_sites=[site],
                algorithm_id=algorithm,
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=CODES["finding"], value=CODES["absent"])
                ],
            )
        )

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(),
            name=algorithm_name,
            manufacturer_name=MANUFACTURER,
            model_name=MODEL_NAME,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CODES["procedure"],
        imaging_measurements=groups,
    )
    evidence = [patient_and_study_copy(s) for s in sources]
    evidence.append(patient_and_study_copy(seg))
    try:
        sr: Any = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report,
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description="AI measurements",
            software_versions=SOFTWARE_VERSION,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(f"cannot write the measurement report: {exc}") from exc
    return sr
