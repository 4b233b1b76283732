"""render_png, window presets and available_presets."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clearscan.imaging import (
    WINDOW_PRESETS,
    ImagingError,
    available_presets,
    decode,
    render_png,
)
from clearscan.imaging.render import PERCENTILE_PRESETS, apply_window, resolve_window

HU = np.array([[-1000, -600, -100, 0], [40, 240, 400, 1000], [1300, 2000, 3000, -500]], np.int16)


def _open(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


@pytest.fixture
def ct(imgdata):
    return decode(imgdata.dicom(HU, modality="CT", window=(40.0, 400.0)))


@pytest.fixture
def mr(imgdata):
    arr = (np.arange(64 * 64).reshape(64, 64) % 900).astype(np.uint16)
    return decode(imgdata.dicom(arr, modality="MR"))


def test_default_render_is_decoded_pixels(ct):
    im = _open(render_png(ct))
    assert im.mode == "L" and im.size == (4, 3)
    expected = np.round(ct.pixels * 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(im), expected)
    assert render_png(ct, preset="default") == render_png(ct)


def test_ct_presets(ct):
    assert WINDOW_PRESETS["CT"]["lung"] == (-600.0, 1500.0)
    for name, (center, width) in WINDOW_PRESETS["CT"].items():
        im = _open(render_png(ct, preset=name))
        expected = np.clip((HU - (center - width / 2)) / width, 0, 1)
        np.testing.assert_allclose(np.asarray(im) / 255.0, expected, atol=1 / 255 + 1e-6)


def test_explicit_window_matches_preset(ct):
    assert render_png(ct, window=(-600, 1500)) == render_png(ct, preset="lung")
    assert resolve_window(ct, window=(10, 20)) == (10.0, 20.0)
    assert resolve_window(ct, preset="bone") == WINDOW_PRESETS["CT"]["bone"]
    assert resolve_window(ct) is None


def test_available_presets(ct, mr, imgdata):
    ct_names = available_presets(ct)
    assert ct_names[0] == "default"
    assert {"lung", "mediastinum", "bone", "brain", "abdomen"} <= set(ct_names)
    assert set(PERCENTILE_PRESETS) <= set(ct_names)
    mr_names = available_presets(mr)
    assert "lung" not in mr_names
    assert mr_names == ["default", "auto", "soft", "full"]
    rgb = decode(imgdata.png(np.zeros((4, 4, 3), np.uint8)))
    assert available_presets(rgb) == ["default"]
    gray_png = decode(imgdata.png(np.zeros((4, 4), np.uint8)))
    assert available_presets(gray_png) == ["default", "auto", "soft", "full"]


def test_percentile_presets(mr):
    full = np.asarray(_open(render_png(mr, preset="full")))
    assert full.min() == 0 and full.max() == 255
    auto = np.asarray(_open(render_png(mr, preset="auto")))
    soft = np.asarray(_open(render_png(mr, preset="soft")))
    # tighter percentiles saturate more pixels
    assert (soft == 255).sum() > (auto == 255).sum() >= (full == 255).sum()
    center, width = resolve_window(mr, preset="soft") or (0.0, 0.0)
    lo, hi = np.percentile(mr.values, (5, 95))
    assert center == pytest.approx((lo + hi) / 2) and width == pytest.approx(hi - lo)


def test_percentile_on_constant_image_is_mid_gray(imgdata):
    img = decode(imgdata.dicom(np.full((4, 4), 7, np.uint16), modality="MR"))
    arr = np.asarray(_open(render_png(img, preset="auto")))
    assert (arr == 128).all()


def test_percentile_preset_on_png(imgdata):
    arr = np.tile(np.arange(100, 156, dtype=np.uint8), (4, 1))
    img = decode(imgdata.png(arr))
    out = np.asarray(_open(render_png(img, preset="full")))
    assert out.min() == 0 and out.max() == 255


def test_monochrome1_stays_inverted_under_windowing(imgdata):
    img = decode(imgdata.dicom(HU, modality="CT", photometric="MONOCHROME1"))
    out = np.asarray(_open(render_png(img, preset="bone")))
    assert out[0, 0] == 255  # -1000 is below the bone window: white in MONOCHROME1
    assert out[2, 2] == 0  # 3000 is above it: black


def test_rgb_render(imgdata):
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    im = _open(render_png(decode(imgdata.png(arr))))
    assert im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), arr)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((3000, 1000), 2048, (2048, 683)),
        ((1000, 3000), 2048, (683, 2048)),
        ((300, 200), 2048, (300, 200)),
        ((300, 200), 100, (100, 67)),
        ((3000, 1000), None, (3000, 1000)),
    ],
)
def test_downscale_keeps_aspect(imgdata, size, max_side, expected):
    img = decode(imgdata.png(Image.new("L", size, 90)))
    im = _open(render_png(img, max_side=max_side))
    assert im.size == expected
    assert im.mode == "L"


def test_unknown_preset(ct, mr):
    with pytest.raises(ImagingError, match="unknown window preset") as info:
        render_png(ct, preset="nope")
    assert info.value.status_code == 422
    assert "lung" in info.value.detail
    with pytest.raises(ImagingError, match="unknown window preset"):
        render_png(mr, preset="lung")  # CT presets do not apply to MR


def test_invalid_arguments(ct, imgdata):
    with pytest.raises(ImagingError, match="not both"):
        render_png(ct, preset="lung", window=(0, 100))
    for bad in [(0, 0), (0, -5), (float("nan"), 10), ("a", 1)]:
        with pytest.raises(ImagingError):
            render_png(ct, window=bad)  # type: ignore[arg-type]
    with pytest.raises(ImagingError):
        render_png(ct, max_side=0)
    png_img = decode(imgdata.png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ImagingError, match="modality values"):
        render_png(png_img, window=(100, 50))
    rgb = decode(imgdata.png(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(ImagingError, match="grayscale"):
        render_png(rgb, window=(100, 50))
    with pytest.raises(ImagingError):
        render_png(rgb, preset="auto")


def test_apply_window():
    out = apply_window(np.array([-100.0, 0.0, 50.0, 100.0, 200.0]), 50.0, 100.0)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def test_nifti_render(imgdata):
    vol = np.random.default_rng(3).normal(size=(32, 24, 5)).astype(np.float32)
    img = decode(imgdata.nifti(vol))
    im = _open(render_png(img, preset="soft"))
    assert im.size == (32, 24)  # width = x, height = y after rot90
