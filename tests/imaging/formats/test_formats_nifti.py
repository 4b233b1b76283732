"""NIfTI-1/NIfTI-2 decoding (.nii and .nii.gz)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from clearscan.imaging import CorruptImage, ImagingError, UnsupportedFormat, decode


def _slab_volume(nx: int = 6, ny: int = 5, nz: int = 7) -> np.ndarray:
    """Slice k along the third axis holds the constant value 10 * k."""
    return np.broadcast_to(np.arange(nz, dtype=np.int16) * 10, (nx, ny, nz)).copy()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_middle_slice_is_picked(imgdata, gz, version):
    img = decode(imgdata.nifti(_slab_volume(), version=version, gz=gz))
    assert img.format == "nifti"
    assert (img.frames, img.frame_index) == (7, 3)
    assert img.values is not None
    np.testing.assert_array_equal(img.values, 30)
    # displayed slice: rot90 of the (x, y) RAS slice -> height = ny, width = nx
    assert (img.height, img.width, img.channels) == (5, 6, 1)
    assert img.modality is None and img.window is None and img.bit_depth == 16
    assert img.pixels.dtype == np.float32 and np.isfinite(img.pixels).all()


def test_explicit_slice_and_out_of_range(imgdata):
    data = imgdata.nifti(_slab_volume())
    np.testing.assert_array_equal(decode(data, frame=0).values, 0)
    np.testing.assert_array_equal(decode(data, frame=6).values, 60)
    with pytest.raises(CorruptImage, match="valid 0-6") as info:
        decode(data, frame=7)
    assert info.value.status_code == 422


def test_slices_follow_canonical_orientation(imgdata):
    # z axis stored inferior->superior reversed: RAS slice 0 is the last stored one.
    affine = np.diag([1.0, 1.0, -1.0, 1.0])
    data = imgdata.nifti(_slab_volume(), affine)
    np.testing.assert_array_equal(decode(data, frame=0).values, 60)
    np.testing.assert_array_equal(decode(data, frame=6).values, 0)


def test_axis_permutation_picks_the_axial_axis(imgdata):
    # Stored axes are (x, z, y): the axial slice axis is the second stored axis.
    vol = np.zeros((4, 9, 3), np.int16)
    vol[:, 2, :] = 77
    affine = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    img = decode(imgdata.nifti(vol, affine), frame=2)
    assert img.frames == 9
    np.testing.assert_array_equal(img.values, 77)
    assert (img.height, img.width) == (3, 4)


@pytest.mark.parametrize("affine_diag", [(1.0, 1.0, 1.0, 1.0), (-1.0, -1.0, 1.0, 1.0)])
def test_display_has_anterior_up(imgdata, affine_diag):
    vol = np.zeros((6, 8, 3), np.int16)
    anterior = 7 if affine_diag[1] > 0 else 0  # highest y index is anterior in RAS storage
    vol[:, anterior, :] = 100
    img = decode(imgdata.nifti(vol, np.diag(affine_diag)))
    np.testing.assert_array_equal(img.values[0], 100)  # top row
    assert (img.values[1:] == 0).all()


def test_display_left_right_convention(imgdata):
    vol = np.zeros((6, 8, 3), np.int16)
    vol[0, :, :] = 50  # x index 0 = patient's far left in RAS storage
    img = decode(imgdata.nifti(vol))
    np.testing.assert_array_equal(img.values[:, 0], 50)  # left column (neurological view)


def test_4d_uses_first_volume(imgdata):
    vol = np.zeros((4, 4, 3, 5), np.float32)
    for t in range(5):
        vol[..., t] = t + 1.5
    img = decode(imgdata.nifti(vol))
    assert img.frames == 3
    np.testing.assert_allclose(img.values, 1.5)
    assert img.bit_depth == 32


def test_2d_image(imgdata):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    img = decode(imgdata.nifti(arr))
    assert (img.frames, img.frame_index) == (1, 0)
    np.testing.assert_array_equal(img.values, np.rot90(arr))


def test_scl_slope_and_inter(imgdata):
    vol = _slab_volume()
    img = decode(imgdata.nifti(vol, slope=2.0, inter=-5.0))
    np.testing.assert_allclose(img.values, 30 * 2.0 - 5.0)


def test_percentile_scaling(imgdata):
    vol = np.zeros((20, 20, 3), np.float32)
    vol[:, :, 1] = np.linspace(0, 1000, 400).reshape(20, 20)
    vol[0, 0, 1] = 1e9  # one hot outlier must not flatten the display
    img = decode(imgdata.nifti(vol))
    assert img.pixels.min() == 0.0 and img.pixels.max() == 1.0
    assert 0.3 < float(np.median(img.pixels)) < 0.7


def test_nan_voxels_give_finite_pixels(imgdata):
    vol = np.full((5, 5, 3), np.nan, np.float32)
    vol[1:4, 1:4, :] = 7.0
    vol[2, 2, 1] = np.inf
    img = decode(imgdata.nifti(vol))
    assert np.isfinite(img.pixels).all() and np.isfinite(img.values).all()


def test_big_endian_nifti(imgdata):
    import nibabel as nib

    vol = _slab_volume()
    hdr = nib.Nifti1Header(endianness=">")
    data = nib.Nifti1Image(vol.astype(">i2"), np.eye(4), hdr).to_bytes()
    assert struct.unpack_from(">i", data)[0] == 348
    np.testing.assert_array_equal(decode(data).values, 30)


def test_truncated_nii(imgdata):
    data = imgdata.nifti(_slab_volume())
    with pytest.raises(CorruptImage, match="truncated"):
        decode(data[:-10])
    with pytest.raises(CorruptImage, match="truncated"):
        decode(data[:400])


def test_truncated_nii_gz(imgdata):
    raw = imgdata.nifti(_slab_volume())
    data = gzip.compress(raw)
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2])


def test_unsupported_datatypes(imgdata):
    with pytest.raises(UnsupportedFormat, match="complex64"):
        decode(imgdata.nifti(np.zeros((4, 4, 4), np.complex64)))


def test_invalid_header_fields(imgdata):
    good = imgdata.nifti(_slab_volume())
    bad_dim = bytearray(good)
    struct.pack_into("<h", bad_dim, 40, 9)  # dim[0] out of range
    bad_size = bytearray(good)
    struct.pack_into("<h", bad_size, 42, -3)  # negative dimension
    bad_offset = bytearray(good)
    struct.pack_into("<f", bad_offset, 108, 0.0)  # vox_offset inside the header
    bad_type = bytearray(good)
    struct.pack_into("<h", bad_type, 70, 3)  # unknown datatype code
    for data in (bad_dim, bad_size, bad_offset, bad_type):
        with pytest.raises(ImagingError):
            decode(bytes(data))


# --- slices read without loading the volume ----------------------------------------------------

_ORIENTATIONS = {
    # stored axes -> RAS: identity, z flipped, and the two permutations that put the axial
    # (slice) axis first or second in storage (sagittal / coronal acquisitions)
    "axial": np.eye(4),
    "axial-flipped": np.diag([-1.0, 1.0, -1.0, 1.0]),
    "slice-axis-first": np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float),
    "slice-axis-second": np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float),
}


def _nibabel_slice(data: bytes, index: int) -> np.ndarray:
    """The oracle: nibabel loads the whole volume, reorients it to RAS+ and takes the slice."""
    import nibabel as nib

    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    img = nib.Nifti1Image.from_bytes(raw) if raw[344:348] == b"n+1\x00" else None
    img = img if img is not None else nib.Nifti2Image.from_bytes(raw)
    ras = nib.as_closest_canonical(img)
    vol = np.asarray(ras.dataobj, dtype=np.float64)
    return np.rot90(vol[:, :, index]).astype(np.float32)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("orientation", list(_ORIENTATIONS))
@pytest.mark.parametrize("dtype", ["<i2", ">f4", "u1"])
def test_any_slice_matches_nibabel(imgdata, gz, orientation, dtype):
    rng = np.random.default_rng(7)
    vol = (rng.random((11, 9, 13)) * 200 - (0 if dtype == "u1" else 100)).astype(dtype)
    data = imgdata.nifti(vol, _ORIENTATIONS[orientation], gz=gz)
    first = decode(data)
    for index in sorted({0, first.frame_index, first.frames - 1}):
        img = decode(data, frame=index)
        np.testing.assert_allclose(img.values, _nibabel_slice(data, index), rtol=1e-6)


@pytest.mark.parametrize("gz", [False, True])
def test_scaled_voxels_and_4d_first_volume_match_nibabel(imgdata, gz):
    rng = np.random.default_rng(3)
    vol = rng.integers(-500, 500, size=(8, 7, 6, 3)).astype(np.int16)  # 4D: 3 time points
    data = imgdata.nifti(vol, gz=gz, slope=0.5, inter=-10.0)
    img = decode(data, frame=2)
    np.testing.assert_allclose(img.values, _nibabel_slice(data, 2)[..., 0], rtol=1e-6)
    np.testing.assert_allclose(img.values, np.rot90(vol[:, :, 2, 0] * 0.5 - 10.0), rtol=1e-6)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("orientation", ["axial", "slice-axis-first"])
def test_a_volume_over_the_pixel_cap_decodes_one_slice_in_little_memory(imgdata, gz, orientation):
    """A 96 x 96 x 200 volume (1.8 M voxels, 3.7 MB) with a 100,000-pixel cap: each slice is
    within the cap, so it decodes; memory holds a plane and the slice, not the volume."""
    import tracemalloc

    from clearscan.imaging import Limits

    vol = np.broadcast_to(np.arange(200, dtype=np.int16), (96, 96, 200)).copy()
    vol[:48] += 1000  # left half brighter, so the slice is not constant
    data = imgdata.nifti(vol, _ORIENTATIONS[orientation], gz=gz)
    limits = Limits(max_pixels=100_000)
    decode(data, frame=0, limits=limits)  # imports done outside the measurement
    tracemalloc.start()
    try:
        img = decode(data, limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(img.values, _nibabel_slice(data, img.frame_index), rtol=1e-6)
    assert peak < vol.nbytes / 4, f"peak {peak:,} bytes for a {vol.nbytes:,}-byte volume"
    with pytest.raises(ImagingError, match="over the limit"):
        decode(data, limits=Limits(max_pixels=96 * 95))  # one slice is 96 x 96 (or 96 x 200)


def test_volume_voxel_cap(imgdata):
    from clearscan.imaging import ImageTooLarge, Limits

    data = imgdata.nifti(np.zeros((10, 10, 10), np.int16), gz=True)
    with pytest.raises(ImageTooLarge, match="1,000 voxels, over the limit of 999"):
        decode(data, limits=Limits(max_volume_voxels=999))
    assert decode(data, limits=Limits(max_volume_voxels=1000)).frames == 10


def test_truncated_gzip_volume_names_the_plane(imgdata):
    vol = np.ones((16, 16, 12), np.int16)
    full = gzip.decompress(imgdata.nifti(vol, gz=True))
    cut = gzip.compress(full[: len(full) - 16 * 16 * 2 * 3], mtime=0)  # last 3 planes missing
    with pytest.raises(CorruptImage, match="truncated: the stream ends in plane 9 of 12"):
        decode(cut, frame=11)
    assert decode(cut, frame=3).frames == 12  # planes before the cut still read
