"""Pixel spacing from DICOM and NIfTI headers, and where it came from: PixelSpacing first; for
projection radiographs ImagerPixelSpacing corrected by the magnification; NIfTI voxel sizes of
the slice's own axes; nothing for PNG/JPEG or unusable values."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from clearscan.imaging import decode
from clearscan.imaging.spacing import PixelSpacing, dicom_spacing, nifti_spacing
from tests.conftest import chest_like, dicom_bytes, png_bytes


def ds(**attrs: object) -> Dataset:
    d = Dataset()
    for k, v in attrs.items():
        setattr(d, k, v)
    return d


def test_pixel_spacing_wins_and_keeps_rows_and_columns_apart():
    got = dicom_spacing(ds(PixelSpacing=[0.2, 0.3], ImagerPixelSpacing=[0.5, 0.5]))
    assert got == PixelSpacing(0.2, 0.3, "PixelSpacing")
    assert not got.isotropic and got.pixel_area_mm2 == pytest.approx(0.06)


def test_imager_spacing_is_corrected_by_the_magnification():
    by_factor = dicom_spacing(
        ds(ImagerPixelSpacing=[0.3, 0.3], EstimatedRadiographicMagnificationFactor=1.5)
    )
    assert by_factor is not None and by_factor.row_mm == pytest.approx(0.2)
    assert "EstimatedRadiographicMagnificationFactor" in by_factor.source
    # XA: the source-to-detector and source-to-isocentre distances (1200 / 800 mm: x1.5)
    geometric = dicom_spacing(
        ds(
            ImagerPixelSpacing=[0.3, 0.3],
            DistanceSourceToDetector=1200,
            DistanceSourceToPatient=800,
        )
    )
    assert geometric is not None and geometric.col_mm == pytest.approx(0.2)
    assert "DistanceSourceToDetector" in geometric.source
    alone = dicom_spacing(ds(ImagerPixelSpacing=[0.3, 0.3]))
    assert alone == PixelSpacing(0.3, 0.3, "ImagerPixelSpacing (at the detector, not corrected)")
    # a patient farther from the source than the detector is a broken header: not corrected
    odd = dicom_spacing(
        ds(ImagerPixelSpacing=[0.3, 0.3], DistanceSourceToDetector=500, DistanceSourceToPatient=800)
    )
    assert odd is not None and odd.row_mm == pytest.approx(0.3) and "not corrected" in odd.source


def test_enhanced_multiframe_shared_pixel_measures():
    measures = ds(PixelSpacing=[0.25, 0.25])
    shared = ds(PixelMeasuresSequence=[measures])
    got = dicom_spacing(ds(SharedFunctionalGroupsSequence=[shared]))
    assert got is not None and got.row_mm == 0.25 and "shared functional groups" in got.source


@pytest.mark.parametrize("bad", [[0, 0.2], [-1, 1], ["x", 1], [1e9, 1e9], [0.2], None, 3])
def test_unusable_values_give_no_spacing(bad):
    # a mapping stands for a dataset whose value pydicom kept as written (no validation)
    assert dicom_spacing({"PixelSpacing": bad}) is None
    assert dicom_spacing(ds()) is None


def test_decoded_images_carry_their_spacing():
    data = dicom_bytes(chest_like(64))
    plain = dcmread(io.BytesIO(data))
    plain.ImagerPixelSpacing = [0.4, 0.4]
    plain.DistanceSourceToDetector = 1000
    plain.DistanceSourceToPatient = 800
    buf = io.BytesIO()
    plain.save_as(buf, enforce_file_format=True)
    img = decode(buf.getvalue())
    assert img.spacing is not None and img.spacing.row_mm == pytest.approx(0.32)
    assert decode(data).spacing is None  # no spacing attribute at all
    assert decode(png_bytes()).spacing is None


def nifti(zooms: tuple[float, float, float], unit: str, affine: np.ndarray | None = None) -> bytes:
    vol = np.zeros((20, 30, 5), np.int16)
    vol[2:8, 3:25, :] = 100
    aff = np.diag([*zooms, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(vol, aff)
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units(xyz=unit)
    return gzip.compress(img.to_bytes())


def test_nifti_spacing_follows_the_slice_axes_and_unit():
    img = decode(nifti((0.5, 0.8, 3.0), "mm"))
    # the slice shows x across (columns) and y up (rows)
    assert (img.width, img.height) == (20, 30)
    assert img.spacing is not None and img.spacing.source == "NIfTI pixdim"
    assert (img.spacing.row_mm, img.spacing.col_mm) == pytest.approx((0.8, 0.5))
    metres = decode(nifti((0.0005, 0.0008, 0.003), "meter"))
    assert metres.spacing is not None and metres.spacing.col_mm == pytest.approx(0.5)
    assert decode(nifti((0.5, 0.8, 3.0), "unknown")).spacing is None


def test_nifti_spacing_of_swapped_axes():
    # stored axis 0 runs along y and axis 1 along x: the slice's columns are stored axis 1
    swap = np.array([[0, 0.8, 0, 0], [0.5, 0, 0, 0], [0, 0, 3.0, 0], [0, 0, 0, 1]])
    img = decode(nifti((0.5, 0.8, 3.0), "mm", swap))
    assert (img.width, img.height) == (30, 20)
    assert img.spacing is not None
    assert (img.spacing.row_mm, img.spacing.col_mm) == pytest.approx((0.5, 0.8))
    assert nifti_spacing((0.5, 0.8), "mm", col_axis=0, row_axis=5) is None
