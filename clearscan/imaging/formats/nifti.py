"""NIfTI-1 and NIfTI-2 volumes (``.nii``, and ``.nii.gz`` through the bounded inflater).

The header is parsed first (from at most 540 inflated bytes) and the volume's size checked
against the limits, and so are the bytes decoding the slice will hold (the slice in the stored
type, its rescaled and float32 copies, the plane buffer of a ``.nii.gz``); then only the chosen
slice of the first 3D volume is read: a strided view of a ``.nii``, or a ``.nii.gz`` inflated one
plane at a time and only as far as needed. The slice is reoriented to the closest canonical (RAS+)
orientation and shown anterior up.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np

from clearscan.imaging.errors import CorruptImage, ImageTooLarge, UnsupportedFormat
from clearscan.imaging.formats.base import DecodedImage, describe_exc, finite, min_max, rescale
from clearscan.imaging.inflate import GZIP_MAGIC, gunzip_prefix, inflate_chunks
from clearscan.imaging.limits import Limits, check_bytes, check_size, decoded_bytes
from clearscan.imaging.spacing import PixelSpacing, nifti_spacing

__all__ = ["decode"]

# NIfTI datatype code -> (name, bytes per voxel) for the types we decode.
_NIFTI_DTYPES: dict[int, tuple[str, int]] = {
    2: ("uint8", 1),
    4: ("int16", 2),
    8: ("int32", 4),
    16: ("float32", 4),
    64: ("float64", 8),
    256: ("int8", 1),
    512: ("uint16", 2),
    768: ("uint32", 4),
    1024: ("int64", 8),
    1280: ("uint64", 8),
}
_NIFTI_UNSUPPORTED = {
    1: "binary",
    32: "complex64",
    128: "RGB24",
    1536: "float128",
    1792: "complex128",
    2048: "complex256",
    2304: "RGBA32",
}
_INFLATE_PLANE_CHUNK = 1 << 20
_MAX_NIFTI_VOX_OFFSET = 64 * 1024 * 1024  # header extensions larger than this are implausible


@dataclass(frozen=True)
class _NiftiHeader:
    version: int
    shape: tuple[int, ...]
    dtype_code: int
    bytes_per_voxel: int
    vox_offset: int


def _nifti_slice(
    data: bytes,
    compressed: bool,
    hdr: _NiftiHeader,
    spatial: tuple[int, int, int],
    dtype: np.dtype,
    axis: int,
    index: int,
) -> np.ndarray:
    """Voxel slice `index` along stored `axis` of the first 3D volume, in stored order (2D).

    Voxels are stored x fastest, then y, then z. A .nii is already in memory: the slice is a
    strided view of it. A .nii.gz is inflated one z-plane at a time and only as far as needed
    (through plane `index` for axis 2; all planes for axes 0 and 1), so memory holds one plane
    and the slice, never the volume, and a gzip bomb cannot inflate past the volume."""
    nx, ny, nz = spatial
    plane_bytes = nx * ny * dtype.itemsize
    if not compressed:
        needed = hdr.vox_offset + plane_bytes * nz
        if len(data) < needed:
            raise CorruptImage(
                f"NIfTI voxel data is truncated: expected {needed:,} bytes, found {len(data):,}"
            )
        vol = np.frombuffer(data, dtype, count=nx * ny * nz, offset=hdr.vox_offset)
        vol = vol.reshape((nx, ny, nz), order="F")
        picked: list[slice | int] = [slice(None)] * 3
        picked[axis] = index
        return np.array(vol[tuple(picked)])  # a strided view, copied: only the slice
    last = index if axis == 2 else nz - 1
    out = np.empty((nx, ny) if axis == 2 else (ny if axis == 0 else nx, nz), dtype)
    for z, plane in _inflate_planes(data, hdr.vox_offset, plane_bytes, last + 1):
        grid = np.frombuffer(plane, dtype).reshape((nx, ny), order="F")
        if axis == 2:
            out[:] = grid
        elif axis == 1:
            out[:, z] = grid[:, index]
        else:
            out[:, z] = grid[index, :]
    return out


def _inflate_planes(
    data: bytes, offset: int, plane_bytes: int, count: int
) -> Iterator[tuple[int, bytes]]:
    """Yield (z, plane) for the first `count` planes of `plane_bytes` each, which start `offset`
    bytes into the gzip stream `data`; only about one plane and one inflated chunk are held."""
    buf = bytearray()
    skip, z = offset, 0
    step = min(_INFLATE_PLANE_CHUNK, max(plane_bytes, 1 << 16))
    for chunk in inflate_chunks(data, wbits=16 + zlib.MAX_WBITS, step=step):
        buf += chunk
        if skip:
            if len(buf) < skip:
                continue
            del buf[:skip]
            skip = 0
        while len(buf) >= plane_bytes and z < count:
            yield z, bytes(buf[:plane_bytes])
            del buf[:plane_bytes]
            z += 1
        if z >= count:
            return
    raise CorruptImage(f"NIfTI voxel data is truncated: the stream ends in plane {z} of {count}")


def _parse_nifti_header(head: bytes) -> _NiftiHeader:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        version, size = 1, 348
    elif len(head) >= 540 and head[4:12] in (b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n"):
        version, size = 2, 540
    else:
        raise CorruptImage("NIfTI header is truncated")
    endian = "<" if struct.unpack_from("<i", head)[0] == size else ">"
    if version == 1:
        dims = struct.unpack_from(endian + "8h", head, 40)
        dtype_code = struct.unpack_from(endian + "h", head, 70)[0]
        vox_offset_f = struct.unpack_from(endian + "f", head, 108)[0]
        if not math.isfinite(vox_offset_f):
            raise CorruptImage("NIfTI header has an invalid vox_offset")
        vox_offset = int(vox_offset_f)
        single_file = head[344:348] == b"n+1\x00"
    else:
        dims = struct.unpack_from(endian + "8q", head, 16)
        dtype_code = struct.unpack_from(endian + "h", head, 12)[0]
        vox_offset = struct.unpack_from(endian + "q", head, 168)[0]
        single_file = head[4:8] == b"n+2\x00"
    if not single_file:
        raise UnsupportedFormat(
            "NIfTI header-only file (.hdr): its image data is in a separate .img file; "
            "upload a single-file .nii or .nii.gz"
        )
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise CorruptImage(f"NIfTI header has an invalid number of dimensions ({ndim})")
    shape = tuple(int(d) for d in dims[1 : ndim + 1])
    if any(d < 1 for d in shape):
        raise CorruptImage(f"NIfTI header has invalid dimensions {shape}")
    if ndim < 2:
        raise CorruptImage("NIfTI image is 1-dimensional; a 2D or 3D image is needed")
    if dtype_code in _NIFTI_UNSUPPORTED:
        raise UnsupportedFormat(f"NIfTI datatype {_NIFTI_UNSUPPORTED[dtype_code]} is not supported")
    if dtype_code not in _NIFTI_DTYPES:
        raise CorruptImage(f"NIfTI header has an unknown datatype code {dtype_code}")
    if not size + 4 <= vox_offset <= _MAX_NIFTI_VOX_OFFSET:
        raise CorruptImage(f"NIfTI header has an invalid vox_offset ({vox_offset})")
    return _NiftiHeader(version, shape, dtype_code, _NIFTI_DTYPES[dtype_code][1], vox_offset)


def decode(data: bytes, *, limits: Limits, frame: int | None = None) -> DecodedImage:
    """Decode one slice (``frame``; by default the middle one) of a NIfTI volume."""
    import nibabel as nib
    from nibabel.orientations import apply_orientation, io_orientation

    compressed = data[:2] == GZIP_MAGIC
    head = gunzip_prefix(data, 540) if compressed else data[:540]
    hdr = _parse_nifti_header(head)

    spatial = (*hdr.shape, 1, 1)[:3]
    nx, ny, nz = spatial
    if max(spatial) > limits.max_dimension:
        raise ImageTooLarge(
            f"NIfTI volume is {nx} x {ny} x {nz} voxels; the largest side allowed is "
            f"{limits.max_dimension:,}"
        )
    if nx * ny * nz > limits.max_volume_voxels:
        raise ImageTooLarge(
            f"NIfTI volume is {nx} x {ny} x {nz} = {nx * ny * nz:,} voxels, over the limit of "
            f"{limits.max_volume_voxels:,}"
        )

    klass = nib.Nifti1Header if hdr.version == 1 else nib.Nifti2Header
    try:
        header = klass.from_fileobj(BytesIO(head))
        affine = header.get_best_affine()
        dtype = np.dtype(header.get_data_dtype())
        slope, inter = header.get_slope_inter()
    except Exception as exc:
        raise CorruptImage(f"could not parse NIfTI header: {describe_exc(exc)}") from exc
    if dtype.itemsize != hdr.bytes_per_voxel:
        raise CorruptImage(f"NIfTI header has an inconsistent datatype ({dtype})")

    # Reorient to the closest canonical (RAS+) orientation, reading only the chosen slice.
    ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    try:
        found = io_orientation(affine)
        if np.isfinite(found).all() and (len(hdr.shape) >= 3 or found[2, 0] == 2):
            ornt = found
    except Exception:  # noqa: S110 - a degenerate affine keeps the stored (voxel) orientation
        pass
    in_axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    n_slices = spatial[in_axis]
    index = n_slices // 2 if frame is None else frame
    if not 0 <= index < n_slices:
        raise CorruptImage(
            f"slice {index} is out of range: this volume has {n_slices} slice(s) "
            f"(valid 0-{n_slices - 1})"
        )
    side = [d for axis, d in enumerate(spatial) if axis != in_axis]
    check_size("NIfTI slice", side[0], side[1], 1, limits)
    # held at the peak: the slice as stored, its float64 rescale, the float32 copies made for the
    # percentiles and the contiguous values; a .nii.gz also holds about three planes and a chunk
    held = hdr.bytes_per_voxel + (8 if slope is not None else 0) + 4 + 4
    plane = nx * ny * hdr.bytes_per_voxel
    need = decoded_bytes(
        side[0] * side[1],
        raw_bytes_per_pixel=held,
        channels=1,
        values=True,
        extra=3 * plane + _INFLATE_PLANE_CHUNK if compressed else 0,
    )
    check_bytes(f"NIfTI slice ({side[0]} x {side[1]}, {dtype})", need, limits)
    source_index = index if ornt[in_axis, 1] > 0 else n_slices - 1 - index

    # Only the first 3D volume is read (4D+: the first time point), one z-plane at a time.
    raw = _nifti_slice(data, compressed, hdr, (nx, ny, nz), dtype, in_axis, source_index)
    if slope is not None:
        raw = raw.astype(np.float64) * slope + (inter or 0.0)
    chunk = np.expand_dims(raw, in_axis)
    oriented = apply_orientation(chunk, ornt)  # RAS+: (x, y, 1)
    ras_slice = oriented[:, :, 0]
    values = finite(np.rot90(ras_slice).astype(np.float32))  # anterior up
    values = np.ascontiguousarray(values)

    lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if not hi > lo:
        lo, hi = min_max(values)
    pixels = rescale(values, lo, hi)

    height, width = values.shape
    return DecodedImage(
        pixels=pixels,
        values=values,
        format="nifti",
        width=width,
        height=height,
        channels=1,
        bit_depth=hdr.bytes_per_voxel * 8,
        frames=n_slices,
        frame_index=index,
        decoded_bytes=need,
        spacing=_spacing(header, ornt),
    )


def _spacing(header: Any, ornt: np.ndarray) -> PixelSpacing | None:
    """In-plane spacing of the oriented slice: its columns are the RAS x axis, its rows the y
    axis (see the rot90 above)."""
    try:
        zooms = tuple(float(z) for z in header.get_zooms()[:3])
        unit = str(header.get_xyzt_units()[0])
    except Exception:  # a header nibabel parsed but cannot describe: no spacing
        return None
    axes = {int(out): stored for stored, out in enumerate(ornt[:, 0])}
    if 0 not in axes or 1 not in axes:
        return None
    return nifti_spacing(zooms, unit, col_axis=axes[0], row_axis=axes[1])
