"""Segmentation round trips: written, serialised, read back by highdicom and pydicom."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from clearscan.dicom import secondary_capture, segment_codes, segmentation, to_bytes
from tests.dicom import sources

LABELS = ["background", "vessel", "catheter"]
KINDS = ["LABELMAP", "BINARY"]
SEG_CLASS = {"LABELMAP": "1.2.840.10008.5.1.4.1.1.66.7", "BINARY": "1.2.840.10008.5.1.4.1.1.66.4"}


def _roundtrip(seg: Any) -> tuple[Any, pydicom.Dataset]:
    data = to_bytes(seg)
    assert data[128:132] == b"DICM"
    return hd.seg.segread(BytesIO(data)), pydicom.dcmread(BytesIO(data))


def _single_frame_sources() -> dict[str, pydicom.Dataset]:
    png = np.random.default_rng(3).integers(0, 255, (512, 512), dtype=np.uint8)
    return {
        "dx-monochrome2": sources.dx(),
        "dx-monochrome1": sources.dx(photometric="MONOCHROME1"),
        "dx-non-square": sources.dx(spacing=(0.2, 0.3)),
        "ct-non-square-with-frame-of-reference": sources.ct_slice(),
        "secondary-capture": secondary_capture(png),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(_single_frame_sources()))
def test_single_frame_round_trip(name: str, kind: str) -> None:
    src = _single_frame_sources()[name]
    lm = sources.label_map((512, 512), 2)
    seg = segmentation(
        [src], lm, LABELS, kind=kind, algorithm_name="Vessels", algorithm_version="2.1"
    )
    back, raw = _roundtrip(seg)

    assert raw.SOPClassUID == SEG_CLASS[kind]
    assert raw.Modality == "SEG" and raw.SegmentationType == kind
    # MONOCHROME1 sources too: the segmentation is MONOCHROME2, never inverted
    assert raw.PhotometricInterpretation == "MONOCHROME2"
    assert raw.PresentationLUTShape == "IDENTITY"
    assert raw.BitsAllocated == (8 if kind == "LABELMAP" else 1)
    assert raw.StudyInstanceUID == src.StudyInstanceUID
    assert raw.SeriesInstanceUID != src.SeriesInstanceUID
    assert raw.PatientID == src.PatientID
    (series,) = raw.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedInstanceSequence] == [
        src.SOPInstanceUID
    ]
    assert series.ReferencedInstanceSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    for item in raw.PerFrameFunctionalGroupsSequence:
        (ref,) = item.DerivationImageSequence[0].SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    shared = raw.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" in src:
        assert raw.FrameOfReferenceUID == src.FrameOfReferenceUID
        measures = shared.PixelMeasuresSequence[0]
        assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in src.PixelSpacing]
        position = raw.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == [0.0, 0.0, 10.0]
    else:
        # projection image: no frame of reference, no pixel measures (see the docs)
        assert "FrameOfReferenceUID" not in raw and "PixelMeasuresSequence" not in shared

    combined = back.get_pixels_by_source_instance(
        [src.SOPInstanceUID], combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(combined[0], lm)
    if kind == "BINARY":
        stacked = back.get_pixels_by_source_instance([src.SOPInstanceUID], dtype=np.uint8)
        assert stacked.shape == (1, 512, 512, 2)
        for k in (1, 2):
            np.testing.assert_array_equal(stacked[0, ..., k - 1], (lm == k).astype(np.uint8))


@pytest.mark.parametrize("kind", KINDS)
def test_multi_frame_frames_align_with_source_frames(kind: str) -> None:
    src = sources.xa(frames=30)
    lm = sources.label_map((30, 512, 512), 2, seed=5)
    lm[7] = 0  # an empty frame keeps its place
    back, raw = _roundtrip(segmentation([src], lm, LABELS, kind=kind))

    n_segments = 2 if kind == "BINARY" else 1
    assert int(raw.NumberOfFrames) == 30 * n_segments
    for number, item in enumerate(raw.PerFrameFunctionalGroupsSequence):
        (ref,) = item.DerivationImageSequence[0].SourceImageSequence
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == src.SOPClassUID
        assert int(ref.ReferencedFrameNumber) == number % 30 + 1
        assert ref.SpatialLocationsPreserved == "YES"
        if kind == "BINARY":
            segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
            assert segment == number // 30 + 1
    (series,) = raw.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert src.SOPClassUID == sources.XA  # the caller's dataset is left untouched

    frames = back.get_pixels_by_source_frame(
        src.SOPInstanceUID, list(range(1, 31)), combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(frames, lm)
    # frame by frame, in reverse order too
    for i in (29, 7, 0):
        one = back.get_pixels_by_source_frame(
            src.SOPInstanceUID, [i + 1], combine_segments=True, dtype=np.uint8
        )
        np.testing.assert_array_equal(one[0], lm[i])
    if kind == "BINARY":
        stacked = back.get_pixels_by_source_frame(
            src.SOPInstanceUID, list(range(1, 31)), dtype=np.uint8
        )
        for k in (1, 2):
            np.testing.assert_array_equal(stacked[..., k - 1], (lm == k).astype(np.uint8))
        # the raw bit stream: segment-major, least significant bit first
        bits = np.unpackbits(np.frombuffer(raw.PixelData, np.uint8), bitorder="little")
        expected = np.stack([lm == 1, lm == 2]).ravel()
        np.testing.assert_array_equal(bits[: expected.size], expected)


def test_odd_frame_size_binary_packs_across_frames() -> None:
    src = sources.xa(frames=3, rows=13, cols=11)  # 143 pixels: frames are not byte-aligned
    lm = np.random.default_rng(2).integers(0, 3, (3, 13, 11)).astype(np.uint8)
    back, _raw = _roundtrip(segmentation([src], lm, LABELS, kind="BINARY"))
    frames = back.get_pixels_by_source_frame(
        src.SOPInstanceUID, [1, 2, 3], combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(frames, lm)


@pytest.mark.parametrize("kind", KINDS)
def test_segments_are_described_and_coded(kind: str) -> None:
    src = sources.dx()
    labels = ["background", "vessel", "LAD", "catheter", "guide wire"]
    lm = sources.label_map((512, 512), 4)
    _back, raw = _roundtrip(
        segmentation(
            [src], lm, labels, kind=kind, algorithm_name="VesselNet", algorithm_version="3"
        )
    )
    described = [s for s in raw.SegmentSequence if s.SegmentNumber != 0]
    assert [s.SegmentNumber for s in described] == [1, 2, 3, 4]
    assert [s.SegmentLabel for s in described] == labels[1:]
    types = [s.SegmentedPropertyTypeCodeSequence[0] for s in described]
    cats = [s.SegmentedPropertyCategoryCodeSequence[0] for s in described]
    assert (types[0].CodeValue, types[0].CodingSchemeDesignator) == ("59820001", "SCT")
    assert (types[1].CodeValue, types[1].CodingSchemeDesignator) == ("59438005", "SCT")
    assert (types[2].CodeValue, types[2].CodingSchemeDesignator) == ("19923001", "SCT")
    assert types[3].CodingSchemeDesignator == "99CLEARSCAN"
    assert types[3].CodeMeaning == "guide wire"
    assert cats[0].CodeValue == "91723000" and cats[2].CodeValue == "260787004"
    for s in described:
        assert s.SegmentAlgorithmType == "AUTOMATIC"
        assert s.SegmentAlgorithmName == "VesselNet"
        (algo,) = s.SegmentationAlgorithmIdentificationSequence
        assert algo.AlgorithmName == "VesselNet" and algo.AlgorithmVersion == "3"
        family = algo.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodeMeaning) == ("123110", "Artificial Intelligence")
    if kind == "LABELMAP":
        assert raw.SegmentSequence[0].SegmentNumber == 0  # highdicom's background segment


def test_segment_codes_fallback_is_stable() -> None:
    assert segment_codes("Blood vessel")[1] == codes.SCT.BloodVessel
    assert segment_codes("coronary_artery")[1] == codes.SCT.CoronaryArtery
    category, kind = segment_codes("calcium spot")
    assert category == codes.SCT.Tissue
    assert (kind.value, kind.scheme_designator) == ("CALCIUM-SPOT", "99CLEARSCAN")


def test_labelmap_is_smaller_than_binary_for_many_classes() -> None:
    src = sources.dx()
    lm = sources.label_map((512, 512), 12)
    labels = ["bg", *[f"class {i}" for i in range(1, 13)]]
    lab = to_bytes(segmentation([src], lm, labels, kind="LABELMAP"))
    binary = to_bytes(segmentation([src], lm, labels, kind="BINARY"))
    assert len(lab) < len(binary)


@pytest.mark.parametrize("kind", KINDS)
def test_series_of_slices_maps_frame_to_instance(kind: str) -> None:
    first = sources.ct_slice()
    series = [first]
    for z in (11.0, 12.0):
        nxt = sources.ct_slice()
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            setattr(nxt, keyword, getattr(first, keyword))
        nxt.ImagePositionPatient = [0.0, 0.0, z]
        series.append(nxt)
    lm = sources.label_map((3, 512, 512), 2, seed=11)
    back, raw = _roundtrip(segmentation(series, lm, LABELS, kind=kind))
    for i, src in enumerate(series):
        got = back.get_pixels_by_source_instance(
            [src.SOPInstanceUID], combine_segments=True, dtype=np.uint8
        )
        np.testing.assert_array_equal(got[0], lm[i])
    assert raw.FrameOfReferenceUID == first.FrameOfReferenceUID


@pytest.mark.parametrize("kind", KINDS)
def test_single_frame_xa_without_number_of_frames(kind: str) -> None:
    src = sources.xa(frames=1, rows=64, cols=64)
    del src.NumberOfFrames  # some writers leave it out of single-frame objects
    lm = np.random.default_rng(8).integers(0, 3, (64, 64)).astype(np.uint8)
    back, raw = _roundtrip(segmentation(src, lm, LABELS, kind=kind))  # a lone dataset
    got = back.get_pixels_by_source_frame(
        src.SOPInstanceUID, [1], combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(got[0], lm)
    ref = raw.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
    assert ref[0].ReferencedSOPClassUID == sources.XA and int(ref[0].ReferencedFrameNumber) == 1
