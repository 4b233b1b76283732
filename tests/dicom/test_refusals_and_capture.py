"""Bad inputs are refused with a clear message; the secondary capture of a PNG-like upload."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import highdicom as hd
import numpy as np
import pydicom
import pytest

from clearscan.dicom import DicomOutputError, secondary_capture, segmentation, to_bytes
from clearscan.errors import Unprocessable
from tests.dicom import sources

LABELS = ["background", "vessel"]


def test_refusals_are_unprocessable() -> None:
    assert issubclass(DicomOutputError, Unprocessable)
    assert DicomOutputError("x").status_code == 422


@pytest.mark.parametrize(
    ("make_source", "label_map", "labels", "message"),
    [
        (sources.dx, np.zeros((256, 512), np.uint8), LABELS, "256x512 but the source image is"),
        (sources.dx, np.full((512, 512), 2, np.uint8), LABELS, r"0\.\.1"),
        (sources.dx, np.full((512, 512), -1, np.int16), LABELS, r"0\.\.1"),
        (sources.dx, np.zeros((512, 512), np.uint8), [], "label list is empty"),
        (sources.dx, np.zeros((512, 512), np.uint8), ["background"], "no class"),
        (sources.dx, np.zeros((512, 512), np.float32), LABELS, "integers"),
        (
            lambda: sources.xa(frames=5, rows=32, cols=32),
            np.zeros((4, 32, 32), np.uint8),
            LABELS,
            "4 frames but the source has 5",
        ),
        (
            lambda: sources.xa(frames=5, rows=32, cols=32),
            np.zeros((32, 32), np.uint8),
            LABELS,
            "1 frames but the source has 5",
        ),
        (sources.dx, np.zeros((2, 2, 512, 512), np.uint8), LABELS, "dimensions"),
    ],
)
def test_bad_label_maps_are_refused(
    make_source: Callable[[], pydicom.Dataset],
    label_map: np.ndarray,
    labels: list[str],
    message: str,
) -> None:
    with pytest.raises(DicomOutputError, match=message):
        segmentation([make_source()], label_map, labels)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(DicomOutputError, match="kind"):
        segmentation([sources.dx()], np.zeros((512, 512), np.uint8), LABELS, kind="FRACTIONAL")  # type: ignore[arg-type]


def test_single_segment_binary_multi_frame() -> None:
    src = sources.xa(frames=4, rows=64, cols=48)
    lm = np.random.default_rng(4).integers(0, 2, (4, 64, 48)).astype(np.uint8)
    seg = hd.seg.segread(BytesIO(to_bytes(segmentation([src], lm, LABELS, kind="BINARY"))))
    frames = seg.get_pixels_by_source_frame(
        src.SOPInstanceUID, [1, 2, 3, 4], combine_segments=True, dtype=np.uint8
    )
    np.testing.assert_array_equal(frames, lm)


@pytest.mark.parametrize(
    ("pixels", "photometric", "bits"),
    [
        (np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8), "MONOCHROME2", 8),
        (np.arange(64 * 80, dtype=np.uint16).reshape(64, 80) * 7, "MONOCHROME2", 16),
        (np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8), "RGB", 8),
    ],
)
def test_secondary_capture_round_trip(pixels: np.ndarray, photometric: str, bits: int) -> None:
    sc = secondary_capture(pixels, patient_id="case-17", pixel_spacing=(0.2, 0.3))
    raw = pydicom.dcmread(BytesIO(to_bytes(sc)))
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert raw.PhotometricInterpretation == photometric and raw.BitsAllocated == bits
    np.testing.assert_array_equal(raw.pixel_array, pixels)
    assert raw.PatientID == "case-17" and str(raw.PatientName) == ""
    assert raw.PatientBirthDate == "" and raw.PatientSex == ""
    assert [float(v) for v in raw.PixelSpacing] == [0.2, 0.3]
    assert "FrameOfReferenceUID" not in raw
    other = secondary_capture(pixels)
    assert other.PatientID == ""
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    assert all(getattr(sc, u) != getattr(other, u) for u in uids)


def test_secondary_capture_keeps_given_study() -> None:
    study = hd.UID()
    sc = secondary_capture(np.zeros((8, 8), np.uint8), study_instance_uid=study)
    assert sc.StudyInstanceUID == study


@pytest.mark.parametrize(
    "pixels",
    [np.zeros((8, 8), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros((2, 8, 8), np.uint16)],
)
def test_secondary_capture_refuses_other_pixels(pixels: np.ndarray) -> None:
    with pytest.raises(DicomOutputError, match="secondary capture"):
        secondary_capture(pixels)
