"""Pixel bombs and size caps: rejected before pixel memory is allocated."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from io import BytesIO

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from clearscan.imaging import CorruptImage, ImageTooLarge, Limits, decode

SMALL_PEAK = 16 * 1024 * 1024  # far below any of the bombs' pixel buffers


def _peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def _expect_too_large(data: bytes, limits: Limits | None = None, match: str | None = None) -> int:
    """Decode must raise ImageTooLarge (413) quickly and with little memory; return the peak."""

    def run() -> None:
        with pytest.raises(ImageTooLarge, match=match) as info:
            decode(data) if limits is None else decode(data, limits=limits)
        assert info.value.status_code == 413

    start = time.perf_counter()
    peak = _peak_bytes(run)
    assert time.perf_counter() - start < 2.0
    assert peak < SMALL_PEAK
    return peak


def test_png_bomb_50000_squared(imgdata):
    data = imgdata.handmade_png(50_000, 50_000)
    assert len(data) < 2_000
    _expect_too_large(data)


def test_png_bomb_caught_even_without_pillow_guard(imgdata, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    _expect_too_large(imgdata.handmade_png(50_000, 50_000), match="over the limit|largest side")


def test_png_over_custom_pixel_cap(imgdata):
    data = imgdata.handmade_png(2_000, 2_000)  # below Pillow's own threshold
    _expect_too_large(data, Limits(max_pixels=1_000_000), match="4,000,000 pixels")


def test_png_side_over_max_dimension(imgdata):
    _expect_too_large(imgdata.handmade_png(40_000, 2), match="largest side")


def test_png_16bit_bomb(imgdata):
    _expect_too_large(imgdata.handmade_png(20_000, 20_000, bit_depth=16))


def test_jpeg_bomb(imgdata):
    small = imgdata.jpeg(np.zeros((16, 16), np.uint8))
    _expect_too_large(imgdata.patch_jpeg_size(small, 60_000, 60_000))
    _expect_too_large(imgdata.patch_jpeg_size(small, 9_000, 9_000))  # 81 Mpx > 64 Mpx


def test_dicom_rows_cols_bomb(imgdata):
    data = imgdata.dicom(np.zeros((2, 2), np.uint16), extra={"Rows": 60_000, "Columns": 60_000})
    assert len(data) < 2_000
    _expect_too_large(data, match="60000 x 60000")


def test_dicom_frames_bomb(imgdata):
    # 4096 x 4096 x 10 frames claimed over 8 bytes of pixel data: each frame is within the cap
    # (only one is ever decoded), and the missing bytes are found before anything is allocated.
    data = imgdata.dicom(
        np.zeros((2, 2), np.uint16), extra={"Rows": 4096, "Columns": 4096, "NumberOfFrames": 10}
    )

    def run() -> None:
        with pytest.raises(CorruptImage, match="truncated"):
            decode(data)

    assert _peak_bytes(run) < SMALL_PEAK


def test_dicom_multiframe_capped_per_frame_not_by_frame_count(imgdata):
    """A multi-frame file whose frames together exceed the cap decodes (one frame is read); a
    single frame over the cap is still refused."""
    vol = np.stack([np.full((64, 64), 100 * i, np.uint16) for i in range(20)])
    data = imgdata.dicom(vol, frames=20)
    img = decode(data, limits=Limits(max_pixels=64 * 64 * 5))  # 20 frames = 4x the cap
    assert (img.frames, img.frame_index, img.width, img.height) == (20, 10, 64, 64)
    assert img.values is not None and float(img.values.max()) == 1000.0
    _expect_too_large(data, Limits(max_pixels=64 * 63), match="64 x 64 = 4,096 pixels")


def test_dicom_encapsulated_frame_count_the_data_cannot_hold(imgdata):
    from pydicom.uid import RLELossless

    data = imgdata.dicom(np.zeros((8, 8), np.uint16), compress=RLELossless)
    ds = dcmread(BytesIO(data))
    ds.NumberOfFrames = 1_000_000
    buf = BytesIO()
    ds.save_as(buf)
    with pytest.raises(CorruptImage, match="1,000,000 frames"):
        decode(buf.getvalue())


def test_dicom_samples_count_towards_cap(imgdata):
    data = imgdata.dicom(np.zeros((2, 2), np.uint16), extra={"Rows": 5000, "Columns": 5000})
    # 25 Mpx single-sample is within the cap, so it gets as far as the (missing) pixel bytes
    with pytest.raises(CorruptImage, match="truncated"):
        decode(data)
    rgb = imgdata.dicom(
        np.zeros((2, 2, 3), np.uint8),
        photometric="RGB",
        extra={"Rows": 5000, "Columns": 5000},
    )
    _expect_too_large(rgb, Limits(max_pixels=50_000_000))


def test_dicom_compressed_bomb(imgdata):
    from pydicom.uid import RLELossless

    data = imgdata.dicom(np.zeros((8, 8), np.uint16), compress=RLELossless)
    ds = dcmread(BytesIO(data))
    ds.Rows = 20_000
    ds.Columns = 20_000
    buf = BytesIO()
    ds.save_as(buf)
    _expect_too_large(buf.getvalue())


def test_deflated_dicom_bomb():
    # A deflated-syntax file whose dataset inflates to 1 GiB of zeros (pydicom itself would
    # zlib.decompress() all of it). Full-flushed deflate blocks can be repeated verbatim.
    meta_uid = b"1.2.840.10008.1.2.1.99\x00"
    elem = b"\x02\x00\x10\x00UI" + len(meta_uid).to_bytes(2, "little") + meta_uid
    group_len = b"\x02\x00\x00\x00UL\x04\x00" + len(elem).to_bytes(4, "little")
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    body = block * 1024 + comp.flush()
    data = bytes(128) + b"DICM" + group_len + elem + body
    assert len(data) < 2_000_000
    limits = Limits(max_pixels=1_000_000)  # inflation cap: 4 bytes/pixel + 16 MiB of header

    def run() -> None:
        with pytest.raises(ImageTooLarge, match="deflated"):
            decode(data, limits=limits)

    start = time.perf_counter()
    assert _peak_bytes(run) < 64 * 1024 * 1024
    assert time.perf_counter() - start < 2.0


def test_nifti_dims_over_cap(imgdata):
    good = bytearray(imgdata.nifti(np.zeros((4, 4, 4), np.int16)))
    struct.pack_into("<3h", good, 42, 2000, 2000, 2000)
    _expect_too_large(bytes(good), match="over the limit")
    struct.pack_into("<3h", good, 42, 32000, 2, 2)
    _expect_too_large(bytes(good), match="largest side")


def test_nifti_gz_dims_over_cap(imgdata):
    raw = bytearray(imgdata.nifti(np.zeros((4, 4, 4), np.int16)))
    struct.pack_into("<3h", raw, 42, 1000, 1000, 1000)
    _expect_too_large(gzip.compress(bytes(raw)))


def test_nifti_gzip_bomb_only_decompresses_what_the_header_needs(imgdata):
    vol = np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8)
    data = imgdata.nifti_gz_bomb(vol, zero_members=512)  # ~512 MiB of trailing zeros
    assert len(data) < 1_000_000
    result: dict[str, object] = {}

    def run() -> None:
        result["img"] = decode(data)

    start = time.perf_counter()
    peak = _peak_bytes(run)
    assert time.perf_counter() - start < 2.0
    assert peak < SMALL_PEAK
    img = result["img"]
    assert img.frames == 8  # type: ignore[attr-defined]


def test_nifti_gzip_claiming_huge_4d_reads_first_volume_only(imgdata):
    vol = np.ones((8, 8, 4), np.int16)
    raw = bytearray(imgdata.nifti(vol))
    struct.pack_into("<h", raw, 40, 4)  # 4D ...
    struct.pack_into("<h", raw, 48, 30_000)  # ... with 30,000 time points (mostly absent)
    member = gzip.compress(bytes(1 << 20), compresslevel=9)
    data = gzip.compress(bytes(raw)) + member * 64

    def run() -> None:
        img = decode(data)
        np.testing.assert_array_equal(img.values, 1)

    assert _peak_bytes(run) < SMALL_PEAK


def test_dicom_jpeg2000_codestream_bomb(imgdata):
    # Header says 64 x 64, the J2K codestream inside claims 60,000 x 60,000: the decoder would
    # size its output from the codestream, so this must be refused before decoding.
    from pydicom.uid import JPEG2000Lossless

    pytest.importorskip("openjpeg")
    data = bytearray(imgdata.dicom(np.zeros((64, 64), np.uint16), compress=JPEG2000Lossless))
    siz = data.find(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, siz + 8, 60_000, 60_000)

    def run() -> None:
        with pytest.raises(CorruptImage, match="60000 x 60000 but the header says 64 x 64"):
            decode(bytes(data))

    assert _peak_bytes(run) < SMALL_PEAK


def test_dicom_jpeg_codestream_bomb(imgdata):
    from pydicom.encaps import encapsulate

    jpeg = imgdata.patch_jpeg_size(imgdata.jpeg(np.zeros((16, 16), np.uint8)), 60_000, 60_000)
    header = {
        "Rows": 16,
        "Columns": 16,
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "BitsAllocated": 8,
        "BitsStored": 8,
        "HighBit": 7,
        "PixelRepresentation": 0,
    }
    data = imgdata.dicom(
        None,
        extra=header,
        pixel_data=encapsulate([jpeg]),
        transfer_syntax="1.2.840.10008.1.2.4.50",
    )

    def run() -> None:
        with pytest.raises(CorruptImage, match="60000 x 60000"):
            decode(data)

    assert _peak_bytes(run) < SMALL_PEAK
