"""Source images built with pydicom for the DICOM output tests."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DX = "1.2.840.10008.5.1.4.1.1.1"  # Digital X-Ray Image Storage - For Presentation
XA = "1.2.840.10008.5.1.4.1.1.12.1"  # X-Ray Angiographic Image Storage
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def _image(
    sop_class: str, modality: str, frames: int, rows: int, cols: int, photometric: str
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientID = "pseudo-7"
    ds.PatientName = ""
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = np.random.default_rng(1).integers(0, 4096, (frames, rows, cols), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def dx(photometric: str = "MONOCHROME2", spacing: tuple[float, float] = (0.15, 0.15)) -> Dataset:
    """A 512x512 16-bit projection radiograph: no frame of reference, Pixel Spacing given."""
    ds = _image(DX, "DX", 1, 512, 512, photometric)
    ds.PixelSpacing = list(spacing)
    ds.ImagerPixelSpacing = list(spacing)
    return ds


def xa(frames: int = 30, rows: int = 512, cols: int = 512) -> Dataset:
    """A legacy multi-frame angiogram: Imager Pixel Spacing only, no frame of reference."""
    ds = _image(XA, "XA", frames, rows, cols, "MONOCHROME2")
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 66.7
    ds.ImagerPixelSpacing = [0.2, 0.2]
    return ds


def ct_slice(spacing: tuple[float, float] = (0.2, 0.3)) -> Dataset:
    """A slice with a patient frame of reference and non-square Pixel Spacing."""
    ds = _image(CT, "CT", 1, 512, 512, "MONOCHROME2")
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [0.0, 0.0, 10.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = 1.0
    return ds


def label_map(shape: tuple[int, ...], classes: int, seed: int = 0) -> np.ndarray:
    """Blocky class labels 0..classes (every class present)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes + 1, (*shape[:-2], shape[-2] // 16, shape[-1] // 16))
    out = np.repeat(np.repeat(coarse, 16, axis=-2), 16, axis=-1).astype(np.uint8)
    out.reshape(-1)[: classes + 1] = np.arange(classes + 1)
    return out
