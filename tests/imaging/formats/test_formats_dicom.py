"""DICOM decoding with generated datasets."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from clearscan.imaging import CorruptImage, ImagingError, UnsupportedFormat, decode

STORED = np.array(
    [[0, 500, 1000, 1500], [1800, 2000, 2100, 2200], [2500, 3000, 3500, 4000], [4095, 7, 1024, 1]],
    dtype=np.uint16,
)


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    # DICOM PS3.3 C.11.2.1.2.1 (LINEAR), normalised to [0, 1]
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _no_patient_data(img, strings) -> None:
    text = repr(dataclasses.replace(img, pixels=np.zeros(1), values=None)) + " ".join(
        str(getattr(img, f.name)) for f in dataclasses.fields(img)
    )
    for s in strings:
        assert s not in text


def test_monochrome2_rescale_and_window(imgdata):
    data = imgdata.dicom(STORED, bits_stored=12, rescale=(2.0, -1024.0), window=(0.0, 400.0))
    img = decode(data)
    expected_values = STORED.astype(np.float64) * 2.0 - 1024.0
    assert img.format == "dicom"
    assert (img.width, img.height, img.channels) == (4, 4, 1)
    assert img.bit_depth == 12
    assert img.modality == "CT" and img.photometric == "MONOCHROME2"
    assert img.window == (0.0, 400.0)
    assert img.transfer_syntax == "1.2.840.10008.1.2.1"
    assert img.values is not None and img.values.dtype == np.float32
    np.testing.assert_allclose(img.values, expected_values)
    np.testing.assert_allclose(img.pixels, _linear_window(expected_values, 0.0, 400.0), atol=1e-5)
    assert img.pixels.dtype == np.float32
    assert img.study_uid and img.series_uid and img.sop_uid
    _no_patient_data(img, imgdata.patient_strings)


def test_no_window_uses_min_max(imgdata):
    img = decode(imgdata.dicom(STORED, bits_stored=12))
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
    np.testing.assert_allclose(img.pixels, STORED / 4095.0, atol=1e-6)
    assert img.window == (2047.5, 4095.0)


def test_invalid_window_falls_back_to_min_max(imgdata):
    img = decode(imgdata.dicom(STORED, window=(100.0, 0.0)))
    np.testing.assert_allclose(img.pixels, STORED / 4095.0, atol=1e-6)


def test_linear_exact_and_multi_valued_window(imgdata):
    data = imgdata.dicom(
        STORED,
        extra={
            "VOILUTFunction": "LINEAR_EXACT",
            "WindowCenter": [2000, 40],
            "WindowWidth": [1000, 80],
        },
    )
    img = decode(data)
    assert img.window == (2000.0, 1000.0)
    expected = np.clip((STORED - 2000.0) / 1000.0 + 0.5, 0, 1)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)


def test_sigmoid_window_uses_pydicom(imgdata):
    img = decode(
        imgdata.dicom(STORED, window=(2000.0, 1000.0), extra={"VOILUTFunction": "SIGMOID"})
    )
    assert 0.0 <= img.pixels.min() < 0.01 and 0.99 < img.pixels.max() <= 1.0
    assert img.pixels[1, 1] == pytest.approx(0.5, abs=1e-3)  # stored 2000 == center


def test_voi_lut_sequence(imgdata):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "OW", (4095 - np.arange(4096)).astype("<u2").tobytes())  # inverting
    data = imgdata.dicom(STORED, bits_stored=12, extra={"VOILUTSequence": Sequence([item])})
    img = decode(data)
    np.testing.assert_allclose(img.pixels, (4095 - STORED) / 4095.0, atol=1e-6)
    assert img.window is None


def test_monochrome1_is_inverted(imgdata):
    mono2 = decode(imgdata.dicom(STORED, window=(2000.0, 3000.0)))
    mono1 = decode(imgdata.dicom(STORED, window=(2000.0, 3000.0), photometric="MONOCHROME1"))
    assert mono1.photometric == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)
    np.testing.assert_allclose(mono1.values, mono2.values)  # modality values are not inverted
    assert mono1.pixels[0, 0] == 1.0  # lowest stored value is brightest


def test_signed_pixels(imgdata):
    arr = np.array([[-1000, -500], [0, 1000]], np.int16)
    img = decode(imgdata.dicom(arr))
    np.testing.assert_allclose(img.values, arr)
    np.testing.assert_allclose(img.pixels, (arr + 1000) / 2000.0, atol=1e-6)


def test_8bit_and_bits_stored(imgdata):
    arr = np.array([[0, 64], [128, 255]], np.uint8)
    img = decode(imgdata.dicom(arr, modality="CR"))
    assert img.bit_depth == 8 and img.modality == "CR"
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)


def test_multiframe_default_middle_and_explicit_frame(imgdata):
    frames = np.stack([np.full((3, 5), 100 * i, np.uint16) for i in range(5)])
    data = imgdata.dicom(frames, frames=5)
    img = decode(data)
    assert (img.frames, img.frame_index) == (5, 2)
    assert (img.height, img.width) == (3, 5)
    np.testing.assert_array_equal(img.values, 200)
    last = decode(data, frame=4)
    np.testing.assert_array_equal(last.values, 400)
    with pytest.raises(CorruptImage, match="valid 0-4") as info:
        decode(data, frame=5)
    assert info.value.status_code == 422
    with pytest.raises(CorruptImage):
        decode(data, frame=-1)


def test_rgb_uncompressed(imgdata):
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    img = decode(imgdata.dicom(arr, photometric="RGB", modality="OT"))
    assert img.channels == 3 and img.values is None and img.window is None
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)


def test_ybr_full_is_converted_to_rgb(imgdata):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    rgb[..., 1] = 30
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    img = decode(imgdata.dicom(ybr, photometric="YBR_FULL", modality="XC"))
    assert img.channels == 3 and img.photometric == "YBR_FULL"
    np.testing.assert_allclose(img.pixels[0, 0], np.array([200, 30, 0]) / 255.0, atol=3 / 255.0)


def test_rle_lossless_roundtrip(imgdata):
    plain = decode(imgdata.dicom(STORED, window=(2000.0, 3000.0)))
    rle = decode(imgdata.dicom(STORED, window=(2000.0, 3000.0), compress=RLELossless))
    assert rle.transfer_syntax == RLELossless
    np.testing.assert_array_equal(rle.values, plain.values)
    np.testing.assert_array_equal(rle.pixels, plain.pixels)


def test_jpeg2000_lossless_roundtrip(imgdata):
    pytest.importorskip("openjpeg")
    arr = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)
    j2k = decode(imgdata.dicom(arr, bits_stored=12, compress=JPEG2000Lossless))
    assert j2k.transfer_syntax == JPEG2000Lossless
    np.testing.assert_array_equal(j2k.values, arr)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_native_syntaxes(imgdata, syntax):
    img = decode(imgdata.dicom(STORED, transfer_syntax=syntax))
    assert img.transfer_syntax == syntax
    np.testing.assert_array_equal(img.values, STORED)


def test_deflated_syntax(imgdata):
    img = decode(imgdata.dicom(STORED, transfer_syntax=DeflatedExplicitVRLittleEndian))
    assert img.transfer_syntax == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(img.values, STORED)


def test_preamble_less_dicom_decodes(imgdata):
    for syntax in (None, ImplicitVRLittleEndian):
        data = imgdata.dicom(STORED, preamble=False, transfer_syntax=syntax)
        assert data[128:132] != b"DICM"
        img = decode(data)
        np.testing.assert_array_equal(img.values, STORED)


def test_no_pixel_data(imgdata):
    with pytest.raises(CorruptImage, match="DICOM file has no pixel data") as info:
        decode(imgdata.dicom(None))
    assert info.value.status_code == 422


def test_missing_rows(imgdata):
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(imgdata.dicom(STORED)))
    del ds.Rows
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(CorruptImage, match="Rows"):
        decode(buf.getvalue())


def test_truncated_pixel_data(imgdata):
    data = imgdata.dicom(np.zeros((64, 64), np.uint16))
    with pytest.raises(CorruptImage, match="truncated") as info:
        decode(data[:-1000])
    assert info.value.status_code == 422


def test_pixel_data_shorter_than_header_claims(imgdata):
    data = imgdata.dicom(None, extra=_image_header(rows=64, cols=64), pixel_data=bytes(100))
    with pytest.raises(CorruptImage, match="expected 8,192 bytes, found 100"):
        decode(data)


def test_truncated_header(imgdata):
    data = imgdata.dicom(STORED)
    for cut in (140, 200, 300):
        with pytest.raises(ImagingError):
            decode(data[:cut])


def test_random_bytes_after_dicm_preamble():
    rng = np.random.default_rng(5)
    for i in range(40):
        body = rng.integers(0, 256, size=int(rng.integers(0, 4000)), dtype=np.uint8).tobytes()
        if i % 2:  # half of them with a plausible-looking meta group start
            body = b"\x02\x00\x00\x00UL\x04\x00" + body
        with pytest.raises(ImagingError) as info:
            decode(bytes(128) + b"DICM" + body)
        assert isinstance(info.value, CorruptImage | UnsupportedFormat)


def test_unsupported_transfer_syntax(imgdata):
    from pydicom.encaps import encapsulate

    data = imgdata.dicom(
        None,
        extra=_image_header(rows=4, cols=4, bits=8),
        pixel_data=encapsulate([b"\x00" * 16]),
        transfer_syntax="1.2.840.10008.1.2.4.100",  # MPEG2 MP@ML
    )
    with pytest.raises(UnsupportedFormat, match="MPEG2") as info:
        decode(data)
    assert info.value.status_code == 415


def test_garbage_compressed_pixel_data_is_corrupt(imgdata):
    from pydicom.encaps import encapsulate

    data = imgdata.dicom(
        None,
        extra=_image_header(rows=16, cols=16, bits=8),
        pixel_data=encapsulate([b"\xff\xd8\xff\xe0" + bytes(64)]),
        transfer_syntax="1.2.840.10008.1.2.4.50",
    )
    with pytest.raises(CorruptImage, match="JPEG Baseline"):
        decode(data)


def test_patient_identifiers_never_in_errors(imgdata):
    strings = imgdata.patient_strings
    variants = [
        imgdata.dicom(None),
        imgdata.dicom(STORED)[:-5],
        imgdata.dicom(STORED, extra={"SamplesPerPixel": 4}),
        imgdata.dicom(STORED, extra={"BitsAllocated": 12}),
        imgdata.dicom(STORED, extra={"NumberOfFrames": 31415926}).replace(b"31415926", b"3141592x"),
    ]
    for data in variants:
        with pytest.raises(ImagingError) as info:
            decode(data)
        for s in strings:
            assert s not in info.value.detail
            assert s not in str(info.value)


def _image_header(*, rows: int, cols: int, bits: int = 16) -> dict[str, object]:
    return {
        "Rows": rows,
        "Columns": cols,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": bits,
        "BitsStored": bits,
        "HighBit": bits - 1,
        "PixelRepresentation": 0,
    }


def test_rust_decoder_panic_is_contained(imgdata):
    """pylibjpeg-rle (Rust/pyo3) panics on this segment; PanicException is a BaseException."""
    import struct

    from pydicom.encaps import encapsulate

    seg1 = b"\x81\x00\x81\x00"  # 2 x 128 zeros: exactly one 256-byte plane
    seg2 = b"\x81\x00\xf3\x00" * 3  # repeat runs that cross the end of the plane
    frame = struct.pack("<16I", 2, 64, 64 + len(seg1), *([0] * 13)) + seg1 + seg2
    data = imgdata.dicom(
        None,
        extra=_image_header(rows=16, cols=16),
        pixel_data=encapsulate([frame]),
        transfer_syntax=RLELossless,
    )
    try:
        img = decode(data)
    except ImagingError:
        return
    assert np.isfinite(img.pixels).all()


def test_decoder_base_exception_becomes_corrupt_image(imgdata, monkeypatch):
    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds: the len is 512 but the index is 512")

    monkeypatch.setattr("pydicom.pixels.pixel_array", panic)
    with pytest.raises(CorruptImage, match="index out of bounds"):
        decode(imgdata.dicom(STORED))


def test_keyboard_interrupt_propagates(imgdata, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("pydicom.pixels.pixel_array", interrupt)
    with pytest.raises(KeyboardInterrupt):
        decode(imgdata.dicom(STORED))


def test_float_pixel_data(imgdata):
    arr = np.array([[0.5, -1.25], [3.0, 10.0]], np.float32)
    header = {k: v for k, v in _image_header(rows=2, cols=2, bits=32).items() if "Bit" not in k}
    header.update(BitsAllocated=32, FloatPixelData=arr.tobytes())
    del header["PixelRepresentation"]
    img = decode(imgdata.dicom(None, extra=header, modality="MR"))
    np.testing.assert_allclose(img.values, arr)
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
