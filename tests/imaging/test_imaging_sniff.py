from __future__ import annotations

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from clearscan.imaging import CorruptImage, ImagingError, UnsupportedFormat, decode, sniff


def test_sniff_png_and_jpeg(imgdata):
    gray = np.zeros((4, 4), np.uint8)
    assert sniff(imgdata.png(gray)) == "png"
    assert sniff(imgdata.jpeg(gray)) == "jpeg"


def test_sniff_dicom_with_and_without_preamble(imgdata):
    pixels = np.zeros((4, 4), np.uint16)
    assert sniff(imgdata.dicom(pixels)) == "dicom"
    bare_explicit = imgdata.dicom(pixels, preamble=False)
    assert bare_explicit[:2] == b"\x08\x00"
    assert sniff(bare_explicit) == "dicom"
    bare_implicit = imgdata.dicom(pixels, preamble=False, transfer_syntax="1.2.840.10008.1.2")
    assert bare_implicit[4:6] not in (b"CS", b"UI")  # really implicit VR
    assert sniff(bare_implicit) == "dicom"


def test_sniff_dicom_big_endian_without_preamble():
    # (0008,0005) CS "ISO_IR 100" in explicit VR big endian
    data = b"\x00\x08\x00\x05CS\x00\x0aISO_IR 100" + bytes(64)
    assert sniff(data) == "dicom"


def test_sniff_nifti_variants(imgdata):
    vol = np.zeros((4, 4, 4), np.int16)
    assert sniff(imgdata.nifti(vol)) == "nifti"
    assert sniff(imgdata.nifti(vol, gz=True)) == "nifti"
    assert sniff(imgdata.nifti(vol, version=2)) == "nifti"
    assert sniff(imgdata.nifti(vol, version=2, gz=True)) == "nifti"


def test_sniff_ignores_nothing_but_content(imgdata):
    # A PNG stays a PNG whatever it is called; the API never passes names in at all.
    assert sniff(imgdata.png(np.zeros((2, 2), np.uint8))) == "png"


def test_empty_is_corrupt():
    with pytest.raises(CorruptImage, match="empty file") as info:
        sniff(b"")
    assert info.value.status_code == 422


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GIF89a" + bytes(100), "GIF"),
        (b"GIF87a" + bytes(100), "GIF"),
        (b"II*\x00" + bytes(100), "TIFF"),
        (b"BM" + bytes(100), "BMP"),
        (b"%PDF-1.7\n" + bytes(100), "PDF"),
        (b"PK\x03\x04" + bytes(100), "ZIP"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100), "WebP"),
        (b"hello, this is a plain text file\n" * 5, "text"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b'{"patient": "x"}', "JSON"),
        (gzip.compress(b"just some text, not a volume" * 20), "gzip"),
        (bytes(range(256)) * 4, "unrecognised binary data"),
    ],
)
def test_unsupported_types_name_what_they_look_like(data, expected):
    with pytest.raises(UnsupportedFormat) as info:
        sniff(data)
    assert info.value.status_code == 415
    assert expected.lower() in info.value.detail.lower()


def test_real_gif_is_unsupported():
    buf = io.BytesIO()
    Image.new("P", (8, 8)).save(buf, format="GIF")
    with pytest.raises(UnsupportedFormat, match="GIF"):
        decode(buf.getvalue())


def test_random_junk_is_unsupported():
    rng = np.random.default_rng(1)
    for _ in range(50):
        junk = rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes()
        with pytest.raises(ImagingError):
            decode(junk)


def test_analyze_header_without_magic_is_unsupported(imgdata):
    data = bytearray(imgdata.nifti(np.zeros((4, 4, 4), np.uint8)))
    data[344:348] = b"\x00\x00\x00\x00"
    with pytest.raises(UnsupportedFormat, match="Analyze"):
        sniff(bytes(data))


def test_header_only_nifti_is_sniffed_then_refused(imgdata):
    data = bytearray(imgdata.nifti(np.zeros((4, 4, 4), np.uint8)))
    data[344:348] = b"ni1\x00"
    assert sniff(bytes(data)) == "nifti"
    with pytest.raises(UnsupportedFormat, match=r"separate \.img"):
        decode(bytes(data))


def test_truncated_gzip_nifti_header_is_corrupt(imgdata):
    full = imgdata.nifti(np.zeros((4, 4, 4), np.uint8))
    data = gzip.compress(full[:200])
    with pytest.raises(CorruptImage, match="truncated"):
        sniff(data)


def test_corrupt_gzip_is_corrupt():
    data = gzip.compress(b"x" * 1000)
    broken = data[:10] + b"\xff" * 20 + data[30:]
    with pytest.raises(ImagingError):
        sniff(broken)
