"""Factories that build imaging test data in memory (no binary fixtures)."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

PATIENT_NAME = "Doe^Johnathan"
PATIENT_ID = "PID-99887766"
PATIENT_BIRTH_DATE = "19450317"


# --------------------------------------------------------------------------- PNG / JPEG


def png_bytes(image: Image.Image | np.ndarray, **save: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format="PNG", **save)
    return out.getvalue()


def jpeg_bytes(image: Image.Image | np.ndarray, **save: Any) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95, **save)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade_png(width: int, height: int, *, rows: int = 4, bit_depth: int = 8) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but whose IDAT holds only ``rows`` rows.

    Cheap to build even for 50,000 x 50,000: the IDAT is a few zlib-compressed zero rows.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # grayscale
    row = b"\x00" + bytes(width * max(bit_depth // 8, 1))  # filter byte + zero samples
    idat = zlib.compress(row * rows, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite the SOF0/SOF2 frame size of a JPEG (a header-only "bomb")."""
    buf = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        pos = buf.find(marker)
        if pos != -1:
            struct.pack_into(">HH", buf, pos + 5, height, width)
            return bytes(buf)
    raise AssertionError("no SOF marker")


# --------------------------------------------------------------------------- DICOM


def make_dicom(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "CT",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    frames: int | None = None,
    transfer_syntax: str | None = None,
    preamble: bool = True,
    extra: dict[str, Any] | None = None,
    compress: str | None = None,
    pixel_data: bytes | None = None,
) -> bytes:
    """Build a DICOM file in memory with pydicom.

    ``pixels`` is (rows, cols), (rows, cols, 3), (frames, rows, cols) or
    (frames, rows, cols, 3) for ``frames`` > 1. ``pixel_data`` overrides the encoded bytes;
    ``pixels=None`` and ``pixel_data=None`` gives a dataset without Pixel Data.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        generate_uid,
    )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = PATIENT_BIRTH_DATE
    ds.InstitutionName = "St Elsewhere"

    if pixels is not None:
        arr = np.asarray(pixels)
        multi = frames is not None and frames > 1
        color = arr.ndim == (4 if multi else 3)
        rows, cols = arr.shape[1:3] if multi else arr.shape[:2]
        ds.Rows, ds.Columns = int(rows), int(cols)
        ds.SamplesPerPixel = 3 if color else 1
        if color:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = arr.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
        if multi:
            ds.NumberOfFrames = frames
        big_endian = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">" if big_endian else "<")).tobytes()
    if pixel_data is not None:
        ds.PixelData = pixel_data
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    if compress is not None:
        ds.compress(compress)

    out = io.BytesIO()
    if preamble:
        ds.save_as(out, enforce_file_format=True)
    else:
        implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
        del ds.file_meta
        ds.save_as(out, implicit_vr=implicit, little_endian=True)
    return out.getvalue()


# --------------------------------------------------------------------------- NIfTI


def make_nifti(
    volume: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    version: int = 1,
    gz: bool = False,
    slope: float | None = None,
    inter: float | None = None,
) -> bytes:
    import nibabel as nib

    klass = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = klass(volume, np.eye(4) if affine is None else affine)
    img.header.set_data_dtype(volume.dtype)
    data = bytearray(img.to_bytes())
    if slope is not None or inter is not None:
        assert version == 1
        struct.pack_into("<ff", data, 112, slope if slope is not None else 1.0, inter or 0.0)
    raw = bytes(data)
    return gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw


def nifti_gz_bomb(volume: np.ndarray, zero_members: int) -> bytes:
    """A valid .nii.gz followed by ``zero_members`` gzip members of 1 MiB of zeros each.

    The decompressed size is about ``zero_members`` MiB while the file stays tiny.
    """
    member = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return make_nifti(volume, gz=True) + member * zero_members


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def imgdata() -> SimpleNamespace:
    """The factories above, as one fixture (test modules cannot import conftest reliably)."""
    return SimpleNamespace(
        png=png_bytes,
        jpeg=jpeg_bytes,
        handmade_png=handmade_png,
        patch_jpeg_size=patch_jpeg_size,
        dicom=make_dicom,
        nifti=make_nifti,
        nifti_gz_bomb=nifti_gz_bomb,
        patient_strings=(PATIENT_NAME, "Johnathan", PATIENT_ID, PATIENT_BIRTH_DATE),
    )
