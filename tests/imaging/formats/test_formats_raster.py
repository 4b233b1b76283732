"""PNG and JPEG decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clearscan.imaging import CorruptImage, DecodedImage, decode


def _gradient(h: int = 16, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 256).astype(np.uint8)


def _check_common(img: DecodedImage, fmt: str, w: int, h: int, channels: int) -> None:
    assert img.format == fmt
    assert (img.width, img.height, img.channels) == (w, h, channels)
    assert img.pixels.dtype == np.float32
    assert img.pixels.shape == ((h, w) if channels == 1 else (h, w, 3))
    assert np.isfinite(img.pixels).all()
    assert img.pixels.min() >= 0.0 and img.pixels.max() <= 1.0
    assert img.values is None and img.modality is None and img.window is None
    assert (img.frames, img.frame_index) == (1, 0)


def test_png_8bit_gray(imgdata):
    arr = _gradient()
    img = decode(imgdata.png(arr))
    _check_common(img, "png", 32, 16, 1)
    assert img.bit_depth == 8
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)


def test_png_16bit_gray(imgdata):
    arr = (np.arange(16 * 32).reshape(16, 32) * 120).astype(np.uint16)
    img = decode(imgdata.png(Image.fromarray(arr)))
    _check_common(img, "png", 32, 16, 1)
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-6)


def test_png_rgb(imgdata):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    img = decode(imgdata.png(arr))
    _check_common(img, "png", 12, 10, 3)
    np.testing.assert_allclose(img.pixels, arr / 255.0, atol=1e-6)


def test_png_rgba_drops_alpha(imgdata):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    img = decode(imgdata.png(Image.fromarray(arr, "RGBA")))
    _check_common(img, "png", 12, 10, 3)
    np.testing.assert_allclose(img.pixels, arr[..., :3] / 255.0, atol=1e-6)


def test_png_gray_alpha_becomes_gray(imgdata):
    arr = np.stack([_gradient(), np.full((16, 32), 128, np.uint8)], axis=-1)
    img = decode(imgdata.png(Image.fromarray(arr, "LA")))
    _check_common(img, "png", 32, 16, 1)
    np.testing.assert_allclose(img.pixels, arr[..., 0] / 255.0, atol=1e-6)


def test_png_palette_color(imgdata):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    img = decode(imgdata.png(pal))
    _check_common(img, "png", 4, 2, 3)
    np.testing.assert_array_equal(img.pixels[0, 0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(img.pixels[0, 1], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(img.pixels[0, 2], [0.0, 0.0, 1.0])


def test_png_palette_gray_becomes_gray(imgdata):
    pal = Image.new("P", (4, 1))
    pal.putpalette([v for i in range(256) for v in (i, i, i)])
    pal.putdata([0, 85, 170, 255])
    img = decode(imgdata.png(pal))
    _check_common(img, "png", 4, 1, 1)
    np.testing.assert_allclose(img.pixels[0], [0.0, 1 / 3, 2 / 3, 1.0], atol=1e-6)


def test_png_palette_with_transparency(imgdata):
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    pal.putdata([0, 1])
    img = decode(imgdata.png(pal, transparency=0))
    _check_common(img, "png", 2, 1, 3)
    np.testing.assert_allclose(img.pixels[0, 1], np.array([200, 100, 50]) / 255.0, atol=1e-6)


def test_png_bilevel(imgdata):
    arr = np.array([[0, 255, 0, 255]], np.uint8)
    img = decode(imgdata.png(Image.fromarray(arr).convert("1")))
    _check_common(img, "png", 4, 1, 1)
    assert img.bit_depth == 1
    np.testing.assert_array_equal(img.pixels[0], [0.0, 1.0, 0.0, 1.0])


def test_apng_takes_first_frame(imgdata):
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (10, 200, 90)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])
    img = decode(buf.getvalue())
    assert img.frames == 1
    np.testing.assert_allclose(img.pixels, 10 / 255.0, atol=1e-6)


def test_jpeg_gray(imgdata):
    arr = np.full((16, 24), 100, np.uint8)
    img = decode(imgdata.jpeg(arr))
    _check_common(img, "jpeg", 24, 16, 1)
    assert img.bit_depth == 8
    np.testing.assert_allclose(img.pixels, 100 / 255.0, atol=2 / 255.0)


def test_jpeg_rgb(imgdata):
    arr = np.zeros((16, 16, 3), np.uint8)
    arr[..., 0] = 200
    arr[..., 2] = 40
    img = decode(imgdata.jpeg(arr))
    _check_common(img, "jpeg", 16, 16, 3)
    np.testing.assert_allclose(img.pixels[8, 8], np.array([200, 0, 40]) / 255.0, atol=4 / 255.0)


def test_jpeg_cmyk_becomes_rgb(imgdata):
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    img = decode(imgdata.jpeg(cmyk))
    assert img.channels == 3


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0))],
)
def test_jpeg_exif_orientation_applied(imgdata, orientation, corner):
    # Stored 40 wide x 20 high, bright block in the stored top-left corner.
    arr = np.zeros((20, 40), np.uint8)
    arr[:6, :6] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    img = decode(imgdata.jpeg(arr, exif=exif.tobytes()))
    if orientation in (6, 8):
        assert (img.width, img.height) == (20, 40)
    else:
        assert (img.width, img.height) == (40, 20)
    row, col = corner
    assert img.pixels[row, col] > 0.9  # the block ends up in the displayed corner
    assert img.pixels[img.height // 2, img.width // 2] < 0.1


def test_truncated_png_is_corrupt(imgdata):
    data = imgdata.png(np.random.default_rng(2).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(CorruptImage) as info:
        decode(data[: len(data) // 2])
    assert info.value.status_code == 422


def test_png_signature_only_is_corrupt():
    with pytest.raises(CorruptImage):
        decode(b"\x89PNG\r\n\x1a\n")


def test_png_bad_crc_is_corrupt(imgdata):
    data = bytearray(imgdata.png(_gradient()))
    idat = data.find(b"IDAT")
    data[idat + 6] ^= 0xFF
    with pytest.raises(CorruptImage):
        decode(bytes(data))


def test_truncated_jpeg_is_corrupt(imgdata):
    arr = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = imgdata.jpeg(arr)
    with pytest.raises(CorruptImage, match="JPEG"):
        decode(data[: len(data) // 2])


def test_jpeg_soi_only_is_corrupt():
    with pytest.raises(CorruptImage):
        decode(b"\xff\xd8\xff\xe0" + bytes(20))


def test_frame_on_single_image_is_out_of_range(imgdata):
    with pytest.raises(CorruptImage, match="valid 0"):
        decode(imgdata.png(_gradient()), frame=1)


def test_bytearray_and_memoryview_input(imgdata):
    data = imgdata.png(_gradient())
    assert decode(bytearray(data)).width == 32
    assert decode(memoryview(data)).width == 32  # type: ignore[arg-type]
