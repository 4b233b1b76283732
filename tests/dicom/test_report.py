"""TID 1500 measurement report: values, units, codes and references read back."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import highdicom as hd
import pydicom
import pytest

from clearscan.dicom import DicomOutputError, measurement_report, segmentation, to_bytes
from tests.dicom import sources

LABELS = ["background", "vessel"]


def _stenosis(pct: float, mld: float, rvd: float, length: float) -> dict[str, Any]:
    return {
        "percent_stenosis": pct,
        "mld": mld,
        "rvd": rvd,
        "rvd_method": "interpolated",
        "rvd_proximal_distal_mean": rvd + 0.1,
        "lesion_length": length,
        "position": {"x": 120.0, "y": 240.5, "segment": 2, "distance": 14.2},
    }


MEASUREMENTS = {
    "unit": "mm",
    "stenoses": [_stenosis(52.5, 1.25, 2.63, 7.5), _stenosis(31.0, 2.0, 2.9, 4.25)],
    "segments": [],
    "diameter_method": "distance_transform",
}


def _code(item: Any) -> tuple[str, str]:
    return (item.value, item.scheme_designator)


def _read(sr: Any) -> tuple[Any, pydicom.Dataset]:
    data = to_bytes(sr)
    return hd.sr.srread(BytesIO(data)), pydicom.dcmread(BytesIO(data))


def _measurements(group: Any) -> dict[tuple[str, str, str, str], Any]:
    out = {}
    for m in group.get_measurements():
        derivation = m.derivation.value if m.derivation is not None else ""
        method = m.method.value if m.method is not None else ""
        out[(m.name.value, m.name.scheme_designator, derivation, method)] = m
    return out


@pytest.fixture(scope="module")
def multi_frame() -> tuple[pydicom.Dataset, Any]:
    src = sources.xa(frames=30)
    lm = sources.label_map((30, 512, 512), 1, seed=9)
    seg = hd.seg.segread(BytesIO(to_bytes(segmentation([src], lm, LABELS, kind="LABELMAP"))))
    return src, seg


@pytest.mark.parametrize("kind", ["LABELMAP", "BINARY"])
def test_report_values_units_and_references_single_frame(kind: str) -> None:
    src = sources.dx()
    seg = segmentation([src], sources.label_map((512, 512), 1), LABELS, kind=kind)
    back, raw = _read(measurement_report([src], seg, MEASUREMENTS))

    assert isinstance(back, hd.sr.ComprehensiveSR)
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert raw.Modality == "SR" and raw.CompletionFlag == "COMPLETE"
    assert raw.StudyInstanceUID == src.StudyInstanceUID
    assert raw.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = {
        ref.ReferencedSOPInstanceUID: ref.ReferencedSOPClassUID
        for study in raw.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {src.SOPInstanceUID: src.SOPClassUID, seg.SOPInstanceUID: seg.SOPClassUID}

    groups = back.content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Stenosis 1", "Stenosis 2"]
    assert len({g.tracking_uid for g in groups}) == 2
    for group, given in zip(groups, MEASUREMENTS["stenoses"], strict=True):
        assert _code(group.finding_type) == ("415582006", "SCT")
        assert [_code(s.value) for s in group.finding_sites] == [("41801008", "SCT")]
        ref = group.referenced_segmentation_frame
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_sop_class_uid == seg.SOPClassUID
        assert ref.referenced_segment_numbers == [1]
        assert ref.source_image_for_segmentation.referenced_sop_instance_uid == src.SOPInstanceUID
        m = _measurements(group)
        pct = m[("408715008", "SCT", "", "")]
        assert pct.value == pytest.approx(given["percent_stenosis"])
        assert pct.unit.value == "%"
        mld = m[("397413000", "SCT", "255605001", "")]
        assert mld.value == pytest.approx(given["mld"]) and mld.unit.value == "mm"
        rvd = m[("397413000", "SCT", "", "122490")]
        assert rvd.value == pytest.approx(given["rvd"]) and rvd.unit.value == "mm"
        mean = m[("397413000", "SCT", "373098007", "122491")]
        assert mean.value == pytest.approx(given["rvd_proximal_distal_mean"])
        length = m[("408716009", "SCT", "", "")]
        assert length.value == pytest.approx(given["lesion_length"])
        assert length.unit.value == "mm"
        assert len(m) == 5


def test_pixel_units_and_multi_frame_reference(multi_frame: tuple[Any, Any]) -> None:
    src, seg = multi_frame
    px = {**MEASUREMENTS, "unit": "px", "stenoses": MEASUREMENTS["stenoses"][:1]}
    back, _raw = _read(measurement_report([src], seg, px, frame=12))
    (group,) = back.content.get_planar_roi_measurement_groups()
    units = {m.name.value: m.unit for m in group.get_measurements()}
    assert _code(units["408716009"]) == ("{pixel}", "UCUM")
    assert _code(units["408715008"]) == ("%", "UCUM")
    ref = group.referenced_segmentation_frame
    assert ref.referenced_frame_numbers == [12]  # LABELMAP frame 12 <- source frame 12
    source_item = ref.source_image_for_segmentation.ReferencedSOPSequence[0]
    assert source_item.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert int(source_item.ReferencedFrameNumber) == 12
    # the SEG frame referenced is the one derived from source frame 12
    seg_item = seg.PerFrameFunctionalGroupsSequence[11]
    assert seg_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber == 12


def test_empty_stenosis_list_reports_absence(multi_frame: tuple[Any, Any]) -> None:
    src, seg = multi_frame
    back, raw = _read(measurement_report([src], seg, {"unit": "mm", "stenoses": []}))
    (group,) = back.content.get_planar_roi_measurement_groups()
    assert group.tracking_identifier == "No stenosis"
    assert group.get_measurements() == []
    evaluations = {_code(q.name): _code(q.value) for q in group.get_qualitative_evaluations()}
    assert evaluations[("415582006", "SCT")] == ("272519000", "SCT")
    assert raw.ContentSequence  # parses with pydicom


@pytest.mark.parametrize(
    ("measurements", "message"),
    [
        ({"unit": "cm", "stenoses": []}, "unit"),
        ({"unit": "mm", "stenoses": [{"percent_stenosis": "a lot"}]}, "percent_stenosis"),
        ({"unit": "mm", "stenoses": [{**_stenosis(1, 1, 1, 1), "mld": float("nan")}]}, "mld"),
    ],
)
def test_bad_measurements_are_refused(
    multi_frame: tuple[Any, Any], measurements: dict[str, Any], message: str
) -> None:
    src, seg = multi_frame
    with pytest.raises(DicomOutputError, match=message):
        measurement_report([src], seg, measurements)


def test_frame_outside_source_is_refused(multi_frame: tuple[Any, Any]) -> None:
    src, seg = multi_frame
    with pytest.raises(DicomOutputError, match="frame 31"):
        measurement_report([src], seg, MEASUREMENTS, frame=31)
    with pytest.raises(DicomOutputError, match="segment 2"):
        measurement_report([src], seg, MEASUREMENTS, segment_number=2)
