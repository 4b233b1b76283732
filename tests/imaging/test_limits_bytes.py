"""Bytes, not pixels: the decoders count channels, bit depth, DICOM frames and the float32 copies
from the header, and refuse (413, naming the cap) before allocating anything."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from clearscan.imaging import ImageTooLarge, Limits, decode
from clearscan.imaging.limits import FLOAT32_COPIES, check_bytes, decoded_bytes, megabytes

MIB = 1 << 20


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _rgb_png(width: int, height: int) -> bytes:
    """An 8-bit RGB PNG of zeros: tiny on disk (zlib of zero rows), huge when decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return len(payload).to_bytes(4, "big") + kind + payload + crc.to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    comp = zlib.compressobj(9)
    row = bytes(1 + 3 * width)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_small_rgb_png_over_the_byte_budget_is_refused_without_allocating_it():
    # 8,000 x 8,000 RGB is 64 M pixels (the old pixel cap let it through) but about 2 GB to decode
    data = _rgb_png(8_000, 8_000)
    assert len(data) < 300_000
    holder: dict[str, ImageTooLarge] = {}

    def run() -> None:
        with pytest.raises(ImageTooLarge) as info:
            decode(data, limits=Limits())
        holder["exc"] = info.value

    peak = _peak(run)
    assert peak < 16 * MIB  # the header only: nothing near the pixel buffers was allocated
    exc = holder["exc"]
    assert exc.status_code == 413
    assert "CLEARSCAN_MAX_DECODED_MB" in exc.detail and "1,024 MB per image" in exc.detail
    assert "8000 x 8000, mode RGB" in exc.detail


_RSS_CHILD = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from clearscan.imaging import ImageTooLarge, Limits, decode
from tests.imaging.test_limits_bytes import _rgb_png
data = _rgb_png(8_000, 8_000)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode(data, limits=Limits())
except ImageTooLarge:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_png_bomb_refusal_keeps_resident_memory_small():
    """Pillow's own buffers are invisible to tracemalloc: the process's peak resident memory
    (in a fresh process) shows that none of the ~2 GB was allocated either."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(root)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout
    grew_kb = int(out.strip().splitlines()[-1])
    assert grew_kb < 32 * 1024, grew_kb


def test_png_count_matches_what_decoding_holds():
    """The count is above what decoding and preprocessing really allocate, and close to it."""
    from clearscan.inference.manifest import InputSpec
    from clearscan.inference.preprocess import preprocess

    rng = np.random.default_rng(0)
    data = _png(rng.integers(0, 255, (600, 800, 3), dtype=np.uint8))
    result: dict[str, int] = {}

    def run() -> None:
        img = decode(data, limits=Limits())
        preprocess(img.pixels, InputSpec(channels=3, height=64, width=64))
        result["counted"] = img.decoded_bytes

    peak = _peak(run)
    counted = result["counted"]
    assert counted == 600 * 800 * (4 + 3 + 3 * 4 * FLOAT32_COPIES)
    held = peak + 600 * 800 * 4  # + Pillow's own image memory, which tracemalloc does not see
    assert held <= counted <= 2 * held  # an upper bound, not a wild one


def _png(arr: np.ndarray) -> bytes:
    from io import BytesIO

    out = BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def test_grayscale_png_counts_fewer_bytes_than_rgb():
    gray = decode(_png(np.zeros((100, 100), np.uint8)), limits=Limits())
    rgb = decode(_png(np.zeros((100, 100, 3), np.uint8)), limits=Limits())
    assert gray.decoded_bytes == 100 * 100 * (1 + 1 + 4 * FLOAT32_COPIES)
    assert rgb.decoded_bytes == 100 * 100 * (4 + 3 + 12 * FLOAT32_COPIES)


def test_16bit_png_counts_its_bit_depth():
    img = decode(_png(np.zeros((50, 40), np.uint16)), limits=Limits())
    assert img.bit_depth == 16
    assert img.decoded_bytes == 50 * 40 * (2 + 2 + 4 * FLOAT32_COPIES)


def _refused_at(data: bytes, counted: int) -> None:
    """Decodes with a cap of exactly ``counted`` bytes; one byte less is a 413 naming the cap."""
    assert decode(data, limits=Limits(max_decoded_bytes=counted)).decoded_bytes == counted
    with pytest.raises(ImageTooLarge, match="CLEARSCAN_MAX_DECODED_MB"):
        decode(data, limits=Limits(max_decoded_bytes=counted - 1))


def test_16bit_rgb_dicom_counted_right(imgdata):
    rows, cols = 30, 20
    data = imgdata.dicom(np.zeros((rows, cols, 3), np.uint16), photometric="RGB")
    # the pixel data element (6 bytes a pixel) + the decoded frame (6) + two float32 RGB copies
    counted = rows * cols * (6 + 6 + 3 * 4 * FLOAT32_COPIES)
    img = decode(data, limits=Limits())
    assert (img.channels, img.bit_depth, img.decoded_bytes) == (3, 16, counted)
    _refused_at(data, counted)


def test_multiframe_dicom_counts_every_frame_the_dataset_holds(imgdata):
    frames, rows, cols = 12, 16, 24
    vol = np.zeros((frames, rows, cols), np.uint16)
    data = imgdata.dicom(vol, frames=frames)
    # every frame's 2 bytes + the decoded frame (2) + float64 modality LUT (8) + a float32
    # temporary (4) + float32 values (4) + two float32 grayscale copies
    counted = rows * cols * (frames * 2 + 2 + 8 + 4 + 4 + 4 * FLOAT32_COPIES)
    img = decode(data, limits=Limits())
    assert (img.frames, img.decoded_bytes) == (frames, counted)
    _refused_at(data, counted)
    single = decode(imgdata.dicom(vol[0]), limits=Limits())
    assert counted - single.decoded_bytes == rows * cols * (frames - 1) * 2


def test_compressed_dicom_counts_only_the_decoded_frame(imgdata):
    from pydicom.uid import RLELossless

    frames, rows, cols = 4, 16, 16
    data = imgdata.dicom(np.zeros((frames, rows, cols), np.uint8), frames=frames)
    rle = imgdata.dicom(
        np.zeros((frames, rows, cols), np.uint8), frames=frames, compress=RLELossless
    )
    native = decode(data, limits=Limits()).decoded_bytes
    encapsulated = decode(rle, limits=Limits()).decoded_bytes
    assert native - encapsulated == rows * cols * frames  # the native pixel data element


def test_dicom_declared_size_refused_before_the_truncation_check(imgdata):
    # 7,000 x 7,000 16-bit over 8 bytes: under the pixel cap but over the byte cap, refused
    # from the header (413), before the missing pixel data is noticed (422)
    data = imgdata.dicom(np.zeros((2, 2), np.uint16), extra={"Rows": 7_000, "Columns": 7_000})
    with pytest.raises(ImageTooLarge, match=r"7000 x 7000, 1 sample\(s\) of 16 bits"):
        decode(data, limits=Limits())


def test_nifti_counts_the_slice_and_its_dtype(imgdata):
    vol = np.zeros((40, 30, 5), np.float64)
    img = decode(imgdata.nifti(vol), limits=Limits())
    # float64 slice (8) + its float64 rescale (8: the header has a slope) + two float32
    # temporaries (8) + values (4) + two float32 copies
    assert img.decoded_bytes == 30 * 40 * (8 + 8 + 8 + 4 + 4 * FLOAT32_COPIES)
    _refused_at(imgdata.nifti(vol), img.decoded_bytes)
    small = decode(imgdata.nifti(vol.astype(np.uint8)), limits=Limits())
    assert img.decoded_bytes - small.decoded_bytes == 30 * 40 * 7


def test_nifti_gz_counts_its_plane_buffers(imgdata):
    vol = np.zeros((40, 30, 5), np.int16)
    plain = decode(imgdata.nifti(vol), limits=Limits()).decoded_bytes
    gz = decode(imgdata.nifti(vol, gz=True), limits=Limits()).decoded_bytes
    assert gz - plain == 3 * 40 * 30 * 2 + MIB


def test_request_budget_message_names_the_setting():
    limits = Limits(max_request_decoded_bytes=100 * MIB).for_request(used=90 * MIB)
    assert limits.request_bytes_left == 10 * MIB
    check_bytes("PNG image", 10 * MIB, limits)
    with pytest.raises(ImageTooLarge, match="CLEARSCAN_MAX_REQUEST_DECODED_MB") as info:
        check_bytes("PNG image", 10 * MIB + 1, limits)
    assert "100 MB together" in info.value.detail and "10 MB is left" in info.value.detail
    assert Limits(max_request_decoded_bytes=MIB).for_request(used=5 * MIB).request_bytes_left == 0


def test_decoded_bytes_formula():
    assert decoded_bytes(10, raw_bytes_per_pixel=2, channels=1) == 10 * (2 + 8)
    assert (
        decoded_bytes(10, raw_bytes_per_pixel=0, channels=3, values=True, extra=7)
        == 10 * (24 + 4) + 7
    )
    assert megabytes(1024 * MIB) == "1,024 MB" and megabytes(MIB // 4) == "0.25 MB"
