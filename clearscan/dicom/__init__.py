"""Standard DICOM outputs of a prediction: a Secondary Capture of an upload without a DICOM
source, a Segmentation of the label map, and a TID 1500 Structured Report of the quantitative
coronary angiography measured on it. See docs/dicom-outputs.md."""

from clearscan.dicom.outputs import DicomOutputError, from_bytes, to_bytes
from clearscan.dicom.sc import secondary_capture
from clearscan.dicom.seg import segment_codes, segmentation
from clearscan.dicom.sr import measurement_report

__all__ = [
    "DicomOutputError",
    "from_bytes",
    "measurement_report",
    "secondary_capture",
    "segment_codes",
    "segmentation",
    "to_bytes",
]
