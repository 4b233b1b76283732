"""Every locally installed pydicom test file either decodes cleanly or raises an ImagingError.

Only the files shipped inside the pydicom package are used. ``get_testdata_files()`` would also
try to download pydicom-data files (and stall or warn without network), so the local data
directory is globbed directly.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from clearscan.imaging import (
    CorruptImage,
    DecodedImage,
    ImagingError,
    UnsupportedFormat,
    decode,
    render_png,
)

pydicom = pytest.importorskip("pydicom")
from pydicom.data import DATA_ROOT  # noqa: E402

LOCAL_ROOT = Path(DATA_ROOT) / "test_files"

# Must decode whenever present locally (some are download-only and then simply absent).
WELL_KNOWN = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",
    "JPEG-lossy.dcm",  # 12-bit JPEG Extended that libjpeg refuses: read by the GDCM fallback
    "SC_rgb_rle.dcm",
    "SC_rgb_rle_16bit_2frame.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_gdcm_KY.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "examples_jpeg2k.dcm",
    "693_J2KI.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "image_dfl.dcm",
    "rtdose.dcm",
    "liver_1frame.dcm",
]

# Deliberately broken or not images: must be refused with a clear ImagingError.
KNOWN_REJECTED: dict[str, type[ImagingError]] = {
    "MR_truncated.dcm": CorruptImage,  # pixel data cut short
    "JPEG2000-embedded-sequence-delimiter.dcm": CorruptImage,  # delimiter inside codestream
    "rtplan.dcm": CorruptImage,  # no pixel data
    "rtstruct.dcm": CorruptImage,
    "test-SR.dcm": CorruptImage,
    "waveform_ecg.dcm": CorruptImage,
    "zipMR.gz": UnsupportedFormat,  # gzip, but not NIfTI
}


def _local_files() -> list[Path]:
    return sorted(p for p in LOCAL_ROOT.rglob("*") if p.is_file() and p.suffix != ".py")


def _check_decoded(img: DecodedImage) -> None:
    assert isinstance(img, DecodedImage)
    px = img.pixels
    assert px.dtype == np.float32
    assert px.shape[:2] == (img.height, img.width)
    assert px.ndim == (2 if img.channels == 1 else 3)
    assert np.isfinite(px).all()
    assert px.min() >= 0.0 and px.max() <= 1.0
    assert 0 <= img.frame_index < img.frames
    if img.values is not None:
        assert img.values.shape == (img.height, img.width)
        assert np.isfinite(img.values).all()


def test_every_local_file_decodes_or_raises_imaging_error():
    files = _local_files()
    assert len(files) > 50, f"pydicom test data missing under {LOCAL_ROOT}"
    decoded: list[str] = []
    rejected: dict[str, str] = {}
    unexpected: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns a lot about its deliberately odd files
        for path in files:
            name = str(path.relative_to(LOCAL_ROOT))
            try:
                img = decode(path.read_bytes())
                _check_decoded(img)
                render_png(img, max_side=256)
            except ImagingError as exc:
                assert exc.detail and isinstance(exc.detail, str)
                rejected[name] = f"{type(exc).__name__}: {exc.detail}"
            except Exception as exc:
                unexpected[name] = f"{type(exc).__name__}: {exc}"
            else:
                decoded.append(name)
    dicom_rejected = {k: v for k, v in rejected.items() if k.endswith(".dcm")}
    print(
        f"\npydicom corpus: {len(files)} files, {len(decoded)} decoded, {len(rejected)} rejected "
        f"({len(dicom_rejected)} of them *.dcm)"
    )
    for name, why in sorted(dicom_rejected.items()):
        print(f"  rejected {name}: {why}")
    assert not unexpected, f"non-ImagingError exceptions: {unexpected}"
    # 89 of the 176 files pydicom 3.0 ships decoded with pylibjpeg alone; 90 with the GDCM
    # fallback (JPEG-lossy.dcm).
    assert len(decoded) >= 90


@pytest.mark.parametrize("name", WELL_KNOWN)
def test_well_known_files_decode(name):
    path = LOCAL_ROOT / name
    assert path.exists(), f"{name} should ship with pydicom"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = decode(path.read_bytes())
    _check_decoded(img)
    assert img.format == "dicom" and img.transfer_syntax


@pytest.mark.parametrize("name", sorted(KNOWN_REJECTED))
def test_known_broken_files_are_rejected(name):
    path = LOCAL_ROOT / name
    if not path.exists():
        pytest.skip(f"{name} is not installed locally")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KNOWN_REJECTED[name]):
            decode(path.read_bytes())


def test_ct_small_values_match_pydicom():
    from pydicom.pixels import apply_modality_lut

    path = LOCAL_ROOT / "CT_small.dcm"
    ds = pydicom.dcmread(path)
    expected = apply_modality_lut(ds.pixel_array, ds)
    img = decode(path.read_bytes())
    assert img.modality == "CT" and (img.width, img.height) == (128, 128)
    np.testing.assert_allclose(img.values, expected)
    assert img.window is not None
    assert img.sop_uid == ds.SOPInstanceUID
    assert img.study_uid == ds.StudyInstanceUID
    assert str(ds.PatientName) not in repr(img)


def test_multiframe_color_middle_frame():
    path = LOCAL_ROOT / "examples_ybr_color.dcm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = decode(path.read_bytes())
        first = decode(path.read_bytes(), frame=0)
    assert img.frames == 30 and img.frame_index == 15 and img.channels == 3
    assert first.frame_index == 0
    assert not np.array_equal(img.pixels, first.pixels)
