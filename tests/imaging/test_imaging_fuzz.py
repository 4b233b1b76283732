"""Mutated inputs: decode returns an image or raises an ImagingError, never anything else."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from clearscan.imaging import DecodedImage, ImagingError, decode, render_png

MUTANTS_PER_BASE = 40


def _base(imgdata, name: str) -> bytes:
    rng = np.random.default_rng(11)
    gray = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    ct = rng.integers(0, 4096, (16, 16), dtype=np.uint16)
    vol = rng.integers(-100, 100, (8, 6, 5), dtype=np.int16)
    builders = {
        "png-gray": lambda: imgdata.png(gray),
        "png-rgb": lambda: imgdata.png(rgb),
        "jpeg-rgb": lambda: imgdata.jpeg(rgb),
        "dicom": lambda: imgdata.dicom(ct, rescale=(1.0, -1024.0), window=(40.0, 400.0)),
        "dicom-rle": lambda: imgdata.dicom(ct, compress=RLELossless),
        "dicom-j2k": lambda: imgdata.dicom(
            np.tile(ct, (4, 4)), bits_stored=12, compress=JPEG2000Lossless
        ),
        "nifti": lambda: imgdata.nifti(vol),
        "nifti-gz": lambda: imgdata.nifti(vol, gz=True),
    }
    return builders[name]()


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    kind = rng.integers(0, 4)
    if kind == 0:  # flip a few bytes
        for _ in range(int(rng.integers(1, 8))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        del buf[int(rng.integers(1, len(buf))) :]
    elif kind == 2:  # insert junk
        pos = int(rng.integers(0, len(buf)))
        buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:  # overwrite a 4-byte field with an extreme value
        pos = int(rng.integers(0, max(len(buf) - 4, 1)))
        buf[pos : pos + 4] = bytes(
            rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\x00\x01"])
        )
    return bytes(buf)


@pytest.mark.parametrize(
    "base",
    ["png-gray", "png-rgb", "jpeg-rgb", "dicom", "dicom-rle", "dicom-j2k", "nifti", "nifti-gz"],
)
def test_mutations_never_escape(imgdata, base):
    if base == "dicom-j2k":
        pytest.importorskip("openjpeg")
    original = _base(imgdata, base)
    rng = np.random.default_rng(zlib.crc32(base.encode()))
    outcomes = {"decoded": 0, "rejected": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(MUTANTS_PER_BASE):
            data = _mutate(original, rng)
            try:
                img = decode(data)
            except ImagingError as exc:
                assert exc.status_code in (413, 415, 422)
                assert exc.detail
                outcomes["rejected"] += 1
                continue
            assert isinstance(img, DecodedImage)
            assert np.isfinite(img.pixels).all()
            assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
            render_png(img, max_side=64)
            outcomes["decoded"] += 1
    assert sum(outcomes.values()) == MUTANTS_PER_BASE
