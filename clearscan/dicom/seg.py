"""DICOM Segmentation of a class label map (0 = background, 1..K = ``labels[1:]``).

highdicom writes the object. One case it refuses is the common one in angiography: a
multi-frame projection image (legacy XA/RF cine) has no frame of reference, and highdicom only
accepts a single source frame without one. For that case the object is written by highdicom for
the first frame against a metadata view of the source, then extended to every frame here: one
Segmentation frame per source frame (per segment for BINARY), each referring to its source frame
by Referenced Frame Number, indexed by a Frame Label dimension.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from copy import deepcopy
from typing import Any, Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import SecondaryCaptureImageStorage

from clearscan.dicom.outputs import (
    DEVICE_SERIAL,
    MANUFACTURER,
    MODEL_NAME,
    SOFTWARE_VERSION,
    DicomOutputError,
    patient_and_study_copy,
)

__all__ = ["PRIVATE_SCHEME", "segment_codes", "segmentation"]

#: Coding scheme of the fallback segment type for labels no standard concept fits.
PRIVATE_SCHEME = "99CLEARSCAN"

_ANATOMY = codes.SCT.AnatomicalStructure
_OBJECT = codes.SCT.PhysicalObject
_MORPHOLOGY = codes.SCT.MorphologicallyAbnormalStructure
_TISSUE = codes.SCT.Tissue

# normalised label -> (SegmentedPropertyCategory, SegmentedPropertyType)
_KNOWN: dict[str, tuple[Code, Code]] = {
    "vessel": (_ANATOMY, codes.SCT.BloodVessel),
    "vessels": (_ANATOMY, codes.SCT.BloodVessel),
    "blood vessel": (_ANATOMY, codes.SCT.BloodVessel),
    "artery": (_ANATOMY, codes.SCT.Artery),
    "coronary": (_ANATOMY, codes.SCT.CoronaryArtery),
    "coronary artery": (_ANATOMY, codes.SCT.CoronaryArtery),
    "coronary arteries": (_ANATOMY, codes.SCT.CoronaryArtery),
    "lm": (_ANATOMY, codes.SCT.LeftMainCoronaryArtery),
    "left main": (_ANATOMY, codes.SCT.LeftMainCoronaryArtery),
    "left main coronary artery": (_ANATOMY, codes.SCT.LeftMainCoronaryArtery),
    "lad": (_ANATOMY, codes.SCT.LeftAnteriorDescendingCoronaryArtery),
    "left anterior descending": (_ANATOMY, codes.SCT.LeftAnteriorDescendingCoronaryArtery),
    "left anterior descending coronary artery": (
        _ANATOMY,
        codes.SCT.LeftAnteriorDescendingCoronaryArtery,
    ),
    "lcx": (_ANATOMY, codes.SCT.CircumflexCoronaryArtery),
    "circumflex": (_ANATOMY, codes.SCT.CircumflexCoronaryArtery),
    "circumflex coronary artery": (_ANATOMY, codes.SCT.CircumflexCoronaryArtery),
    "rca": (_ANATOMY, codes.SCT.RightCoronaryArtery),
    "right coronary artery": (_ANATOMY, codes.SCT.RightCoronaryArtery),
    "catheter": (_OBJECT, codes.SCT.Catheter),
    "stenosis": (_MORPHOLOGY, codes.SCT.Stenosis),
    "lesion": (_MORPHOLOGY, codes.SCT.Lesion),
    "tissue": (_TISSUE, _TISSUE),
}


def _normalise(label: str) -> str:
    return re.sub(r"[\s_\-]+", " ", label.strip().lower())


def segment_codes(label: str) -> tuple[Code, Code]:
    """(SegmentedPropertyCategory, SegmentedPropertyType) for a class label.

    Known vessel/device names map to SNOMED CT concepts; any other label gets the category SCT
    "Tissue" and a private type ``(<normalised label>, 99CLEARSCAN, <label>)``.
    """
    known = _KNOWN.get(_normalise(label))
    if known is not None:
        return known
    value = re.sub(r"[^A-Za-z0-9]+", "-", _normalise(label)).strip("-").upper()[:16] or "CLASS"
    return _TISSUE, Code(value, PRIVATE_SCHEME, label.strip()[:64] or value)


def _check(
    sources: Sequence[Dataset], label_map: np.ndarray, labels: Sequence[str]
) -> tuple[np.ndarray, int]:
    if len(labels) == 0:
        raise DicomOutputError("the label list is empty: give the background name and classes")
    k = len(labels) - 1
    if k < 1:
        raise DicomOutputError("the label list names no class besides the background")
    if k > 65535:
        raise DicomOutputError(f"{k} classes are more than a segmentation can hold (65535)")
    if len(sources) == 0:
        raise DicomOutputError("no source image given")
    arr = np.asarray(label_map)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DicomOutputError(f"the label map must hold integers, got {arr.dtype}")
    src = sources[0]
    rows, cols = int(src.Rows), int(src.Columns)
    for other in sources[1:]:
        if (int(other.Rows), int(other.Columns)) != (rows, cols):
            raise DicomOutputError("the source images differ in size")
    frames = len(sources) if len(sources) > 1 else int(src.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[np.newaxis]
    if arr.ndim != 3:
        raise DicomOutputError(
            f"the label map must be (H, W) or (F, H, W), got {arr.ndim} dimensions"
        )
    if arr.shape[1:] != (rows, cols):
        raise DicomOutputError(
            f"the label map is {arr.shape[1]}x{arr.shape[2]} but the source image is {rows}x{cols}"
        )
    if arr.shape[0] != frames:
        raise DicomOutputError(
            f"the label map has {arr.shape[0]} frames but the source has {frames}"
        )
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high > k:
        raise DicomOutputError(
            f"label values must lie in 0..{k} (one per class in labels[1:]), found {low}..{high}"
        )
    dtype = np.uint8 if k < 256 else np.uint16
    return np.ascontiguousarray(arr, dtype=dtype), k


def _descriptions(labels: Sequence[str], algorithm_name: str, algorithm_version: str) -> list[Any]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name,
        family=codes.DCM.ArtificialIntelligence,
        version=algorithm_version,
    )
    out = []
    for number, label in enumerate(labels[1:], start=1):
        category, kind = segment_codes(label)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label.strip()[:64] or f"Segment {number}",
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=label.strip()[:64] or f"Segment {number}",
            )
        )
    return out


def _drop_unreadable_pixel_measures(view: Dataset) -> None:
    """For a source without patient coordinates highdicom copies Pixel Spacing into a Pixel
    Measures item without Slice Thickness, which its own reader then rejects. Such a source's
    Segmentation carries no Pixel Measures (the functional group is only required with a frame
    of reference); the spacing stays with the source image every frame refers to."""
    if (
        hd.spatial.get_image_coordinate_system(view) is None
        and "PixelSpacing" in view
        and "SliceThickness" not in view
    ):
        del view.PixelSpacing


# Multi-frame IODs of projection images (and multi-frame Secondary Capture): highdicom reads
# their geometry from functional groups that legacy objects of these classes lack.
_MULTIFRAME_PROJECTION_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    }
)


def _needs_frame_extension(source: Dataset, n_sources: int) -> bool:
    """One image of a multi-frame IOD without patient coordinates: highdicom cannot align its
    frames (see the module docstring)."""
    if n_sources != 1 or hd.spatial.get_image_coordinate_system(source) is not None:
        return False
    return "NumberOfFrames" in source or source.SOPClassUID in _MULTIFRAME_PROJECTION_CLASSES


def segmentation(
    source: Sequence[Dataset] | Dataset,
    label_map: np.ndarray,
    labels: Sequence[str],
    *,
    kind: Literal["LABELMAP", "BINARY"] = "LABELMAP",
    algorithm_name: str = "ClearScan segmentation",
    algorithm_version: str = "1",
    series_number: int = 100,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    series_description: str = "AI segmentation",
    content_label: str = "SEGMENTATION",
) -> Dataset:
    """A DICOM Segmentation (``highdicom.seg.Segmentation``, a ``pydicom.Dataset``).

    ``source``: one single-frame image, a series of single-frame images (one per label-map
    frame), or one multi-frame image (a lone dataset is taken as a one-item list).
    ``label_map``: integers, 0 = background and 1..K the classes ``labels[1:]`` (``labels[0]``
    names the background); ``(H, W)`` for a single frame, ``(F, H, W)`` aligned frame by frame
    with the source. ``kind``: ``"LABELMAP"`` (Label Map Segmentation Storage, one frame per
    source frame holding the class numbers) or ``"BINARY"`` (Segmentation Storage, one 1-bit
    frame per class and source frame). Every source frame gets a Segmentation frame (empty ones
    are kept), so frame i of a LABELMAP refers to source frame i, and frame ``(k - 1) * F + i``
    of a BINARY one to segment k of source frame i.
    Raises :class:`~clearscan.dicom.outputs.DicomOutputError` on a label map that does not fit.
    """
    if kind not in ("LABELMAP", "BINARY"):
        raise DicomOutputError(f"unknown segmentation kind {kind!r}: LABELMAP or BINARY")
    if isinstance(source, Dataset):
        source = [source]
    arr, _k = _check(source, label_map, labels)
    descriptions = _descriptions(labels, algorithm_name, algorithm_version)
    views = [patient_and_study_copy(s) for s in source]
    for view in views:
        _drop_unreadable_pixel_measures(view)
    extend = _needs_frame_extension(views[0], len(views))
    if extend:
        # A single-frame stand-in of the source (a copy, the caller's dataset is left alone):
        # highdicom writes every module but the frames.
        stand_in = views[0]
        for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime"):
            if keyword in stand_in:
                delattr(stand_in, keyword)
        stand_in.SOPClassUID = SecondaryCaptureImageStorage
        pixel_array = arr[0]
    else:
        pixel_array = arr if arr.shape[0] > 1 else arr[0]
    try:
        seg: Any = hd.seg.Segmentation(
            source_images=views,
            pixel_array=pixel_array,
            segmentation_type=kind,
            segment_descriptions=descriptions,
            series_instance_uid=series_instance_uid or hd.UID(),
            series_number=series_number,
            sop_instance_uid=sop_instance_uid or hd.UID(),
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MODEL_NAME,
            software_versions=SOFTWARE_VERSION,
            device_serial_number=DEVICE_SERIAL,
            content_label=content_label,
            content_description=series_description[:64],
            series_description=series_description,
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomOutputError(f"cannot write a segmentation of this source: {exc}") from exc
    if extend:
        seg = _extend_to_all_frames(seg, source[0], arr, kind, len(descriptions))
    return seg


def _extend_to_all_frames(
    seg: Any, source: Dataset, arr: np.ndarray, kind: str, n_segments: int
) -> Any:
    """Turn the one-frame Segmentation written against the stand-in into one with a frame per
    source frame (and segment, for BINARY), each referring to its source frame."""
    n_frames = arr.shape[0]
    sop_class = source.SOPClassUID
    for item in seg.SourceImageSequence:
        item.ReferencedSOPClassUID = sop_class
    for series in seg.ReferencedSeriesSequence:
        for item in series.ReferencedInstanceSequence:
            item.ReferencedSOPClassUID = sop_class

    # Dimensions: (segment number, for BINARY) then the source frame, as a Frame Label.
    organisation = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    frame_index = Dataset()
    frame_index.DimensionIndexPointer = Tag("FrameLabel")
    frame_index.FunctionalGroupPointer = Tag("FrameContentSequence")
    frame_index.DimensionOrganizationUID = organisation
    frame_index.DimensionDescriptionLabel = "Source Frame"
    segment_index = [
        d for d in seg.DimensionIndexSequence if d.DimensionIndexPointer == Tag(0x0062000B)
    ]
    seg.DimensionIndexSequence = [*segment_index, frame_index]

    templates = list(seg.PerFrameFunctionalGroupsSequence)
    per_frame: list[Dataset] = []
    channels = range(1, n_segments + 1) if kind == "BINARY" else [None]
    for c, segment in enumerate(channels):
        template = templates[c] if c < len(templates) else templates[0]
        for i in range(n_frames):
            item = deepcopy(template)
            content = item.FrameContentSequence[0]
            content.FrameLabel = f"Source frame {i + 1}"
            content.DimensionIndexValues = [segment, i + 1] if segment is not None else [i + 1]
            ref = item.DerivationImageSequence[0].SourceImageSequence[0]
            ref.ReferencedSOPClassUID = sop_class
            ref.ReferencedFrameNumber = i + 1
            if segment is not None and "SegmentIdentificationSequence" in item:
                # (with one segment highdicom keeps the identification in the shared groups)
                item.SegmentIdentificationSequence[0].ReferencedSegmentNumber = segment
            per_frame.append(item)
    seg.PerFrameFunctionalGroupsSequence = per_frame

    if kind == "BINARY":
        # Frames of segment 1 (all source frames), then segment 2, ...: bit-packed as one
        # stream, least significant bit first (PS3.5 8.1.1), frames not byte-aligned.
        bits = np.stack([arr == s for s in range(1, n_segments + 1)])
        data = np.packbits(bits.ravel(), bitorder="little").tobytes()
    else:
        data = arr.astype(np.uint16 if seg.BitsAllocated == 16 else np.uint8).tobytes()
    if len(data) % 2:
        data += b"\x00"
    seg.NumberOfFrames = len(per_frame)
    seg.PixelData = data
    return hd.seg.Segmentation.from_dataset(seg, copy=False)
