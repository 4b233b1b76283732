"""What the three DICOM writers (:mod:`.sc`, :mod:`.seg`, :mod:`.sr`) share: the refusal they
raise, the equipment they name, the placeholder patient, and serialisation to Part 10 bytes."""

from __future__ import annotations

from copy import copy
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset

from clearscan import __version__
from clearscan.errors import Unprocessable

__all__ = [
    "MANUFACTURER",
    "MODEL_NAME",
    "DicomOutputError",
    "from_bytes",
    "patient_and_study_copy",
    "to_bytes",
]

MANUFACTURER = "ClearScan"
MODEL_NAME = "ClearScan"
SOFTWARE_VERSION = __version__
DEVICE_SERIAL = "0"

# Type 2 attributes highdicom copies from the source: present (possibly empty) in every output.
_PATIENT_STUDY_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class DicomOutputError(Unprocessable):
    """The inputs cannot be written as the requested DICOM object (422)."""


def to_bytes(ds: Dataset) -> bytes:
    """The dataset as a DICOM Part 10 file (preamble, file meta, then the data set)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Dataset:
    """Parse Part 10 bytes back (for checks and tests)."""
    return pydicom.dcmread(BytesIO(data))


def patient_and_study_copy(source: Dataset) -> Dataset:
    """A metadata-only copy of ``source``: every element but the pixel data (shallow copies, so
    setting a top-level attribute of the copy leaves ``source`` alone), with the type 2
    patient/study attributes the writers copy added empty when absent (the product keeps no
    identifiers, so a source may lack them)."""
    view = Dataset()
    for elem in source:
        if elem.tag.group == 0x7FE0:
            continue
        view.add(copy(elem))
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword not in view:
            setattr(view, keyword, "")
    return view
