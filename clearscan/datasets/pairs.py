"""Segmentation datasets: image + mask pairs.

Layout, as a folder or a .zip of one: ``images/<name>`` and ``masks/<name>``, optionally under
split folders (``train/images/...``, ``val/masks/...``); an image and its mask are matched by
name without extensions (``0001.png`` with ``0001.png``, ``case.nii.gz`` with ``case.nii.gz`` or
``case.png``). Images are PNG, JPEG, DICOM or NIfTI (sniffed from the content); masks are PNG
label maps (pixel value = index into the labels; 8- or 16-bit; for two labels, 0/255 masks are
read as 0/1) or NIfTI label volumes (the same slice as the image: the middle one).

Checks before anything is stored: every image has one mask and every mask an image, a mask has
its image's size, and no mask value lies outside the labels (``labels`` option, background first;
default ``background``, ``foreground``). Masks with no foreground pixel are imported and warned
about; a ``stenoses.csv`` at the top level (the true stenoses, as ``clearscan datasets
synth-angio`` writes them) is checked and kept with the dataset (``info.stenoses_blob``); other
files at the top level (a README) are not imported and are counted in a warning. Messages name
folders, never file names (which may name a patient). Masks are stored as 8-bit PNG label maps
whatever their source format."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from clearscan.datasets.importers import (
    _SPLIT_ALIASES,
    MAX_IMAGE_BYTES,
    DatasetError,
    _check_count,
    _clean,
    _folder_entries,
    _zip_members,
)
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.datasets.splits import BLOB_BATCH, _assign_splits
from clearscan.imaging import ImagingError, Limits, decode
from clearscan.imaging.deid import DeidPolicy
from clearscan.storage.base import BlobStore

if TYPE_CHECKING:
    from clearscan.datasets.service import ImportOptions

__all__ = [
    "DEFAULT_LABELS",
    "PairRecord",
    "PairSource",
    "is_pairs_layout",
    "read_pairs",
    "store_pairs",
]

DEFAULT_LABELS = ["background", "foreground"]
_ROLES = {"images": "image", "masks": "mask"}
_MAX_LABELS = 255  # masks are stored as 8-bit label maps
TRUTH_FILE = "stenoses.csv"  # a ground-truth table at the top level, kept with the dataset
MAX_TRUTH_BYTES = 16 * 2**20


@dataclass
class PairRecord:
    split: str | None
    stem: str  # matching name (the file name without extensions): never shown
    image: str  # member / path of the image
    mask: str  # member / path of the mask
    height: int
    width: int
    channels: int
    pixels: list[int]  # pixels of each label
    key: str = ""  # digest of the (de-identified) image and the stored mask

    @property
    def top_label(self) -> int:
        """The most present label other than the background (0 when there is none)."""
        fg = self.pixels[1:]
        return 0 if not any(fg) else int(np.argmax(fg)) + 1


@dataclass
class PairSource:
    records: list[PairRecord]
    labels: list[str]
    reader: Any  # callable(records) -> iterator of (image bytes, mask PNG bytes)
    warnings: list[str] = field(default_factory=list)
    truth: tuple[bytes, int] | None = None  # stenoses.csv and its row count


def _role(parts: tuple[str, ...]) -> tuple[str | None, str, str] | None:
    """(split, role, stem) of an entry of a pairs layout; None when it is not in one."""
    if len(parts) < 2 or parts[-2].lower() not in _ROLES:
        return None
    split = None
    if len(parts) >= 3:
        alias = _SPLIT_ALIASES.get(parts[-3].lower())
        if alias is None:
            return None
        split = alias
    name = parts[-1]
    stem = name.split(".", 1)[0]
    return split, _ROLES[parts[-2].lower()], stem


def is_pairs_layout(names: list[str]) -> bool:
    """Whether entry names (paths with /) hold an images/ and a masks/ folder side by side."""
    roles = set()
    for n in names:
        parts = PurePosixPath(n).parts
        for strip in (0, 1):  # a zip may wrap everything in one folder
            got = _role(parts[strip:]) if len(parts) > strip else None
            if got is not None:
                roles.add(got[1])
    return roles == {"image", "mask"}


def _where(split: str | None, role: str) -> str:
    folder = "images" if role == "image" else "masks"
    return f"{split}/{folder}" if split else folder


def _mask_array(data: bytes, *, limits: Limits, where: str) -> np.ndarray:
    """A label map (uint16 H x W) from a PNG or NIfTI mask, without rescaling."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        from PIL import Image as PILImage

        try:
            with PILImage.open(io.BytesIO(data)) as im:
                if im.width * im.height > limits.max_pixels:
                    raise DatasetError(f"a mask in {where!r} is larger than the image limit")
                if im.mode not in ("1", "L", "I;16", "I", "P"):
                    raise DatasetError(
                        f"a mask in {where!r} is {im.mode}: masks are one-channel label maps"
                    )
                arr = np.asarray(im)
        except DatasetError:
            raise
        except Exception as exc:
            raise DatasetError(f"a mask in {where!r} is not a readable PNG ({exc})") from None
        return arr.astype(np.int64)
    try:
        img = decode(data, limits=limits)
    except ImagingError as exc:
        raise DatasetError(f"a mask in {where!r}: {exc.detail}") from None
    if img.format != "nifti" or img.values is None:
        raise DatasetError(f"a mask in {where!r} must be a PNG or NIfTI label map")
    values = img.values
    if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
        raise DatasetError(f"a mask in {where!r} holds values that are not whole numbers")
    return values.astype(np.int64)


def _label_map(raw: np.ndarray, n_labels: int, where: str) -> np.ndarray:
    if raw.ndim != 2:
        raise DatasetError(f"a mask in {where!r} is not a one-channel label map")
    if n_labels == 2 and raw.size and raw.max() == 255 and np.isin(raw, (0, 255)).all():
        raw = raw // 255  # a 0/255 binary mask
    if raw.size and (raw.min() < 0 or raw.max() >= n_labels):
        bad = int(raw.max() if raw.max() >= n_labels else raw.min())
        raise DatasetError(
            f"a mask in {where!r} holds the value {bad}, outside the {n_labels} labels "
            f"(0 to {n_labels - 1})"
        )
    return raw.astype(np.uint8)


def _png(label_map: np.ndarray) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    PILImage.fromarray(label_map, mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _pair(
    image: bytes,
    mask: bytes,
    *,
    labels: list[str],
    limits: Limits,
    deid: DeidPolicy | None,
    split: str | None,
) -> tuple[bytes, bytes, Any, np.ndarray]:
    """(the image as stored, the mask as stored, the decoded image, the label map)."""
    where_i, where_m = _where(split, "image"), _where(split, "mask")
    try:
        image = _clean(image, deid, limits)
        img = decode(image, limits=limits)
    except ImagingError as exc:
        raise DatasetError(f"an image in {where_i!r}: {exc.detail}") from None
    label_map = _label_map(_mask_array(mask, limits=limits, where=where_m), len(labels), where_m)
    if label_map.shape != (img.height, img.width):
        raise DatasetError(
            f"a mask in {where_m!r} is {label_map.shape[1]} x {label_map.shape[0]} pixels, its "
            f"image {img.width} x {img.height}: a mask must have its image's size"
        )
    return image, _png(label_map), img, label_map


def read_pairs(
    path: Path,
    *,
    labels: list[str] | None,
    limits: Limits,
    max_bytes: int,
    deid: DeidPolicy | None = None,
) -> PairSource:
    """The pairs of a folder or zip (see the module's docstring), checked; DICOM images are
    de-identified under `deid` when given."""
    labels = list(labels or DEFAULT_LABELS)
    if len(labels) < 2 or len(labels) > _MAX_LABELS or len(set(labels)) != len(labels):
        raise DatasetError(f"labels: give 2 to {_MAX_LABELS} distinct names, the background first")
    entries: list[tuple[tuple[str, ...], Any]]
    if path.is_dir():
        entries = [(parts, p) for parts, p in _folder_entries(path)]
        for parts, p in entries:
            if p.stat().st_size > MAX_IMAGE_BYTES:
                raise DatasetError(
                    f"a file in {'/'.join(parts[:-1])!r}: larger than {MAX_IMAGE_BYTES // 2**20} MB"
                )

        def read(ref: Any) -> bytes:
            return bytes(Path(ref).read_bytes())

    else:
        try:
            with zipfile.ZipFile(path) as zf:
                entries = list(_zip_members(zf, max_bytes))
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(f"not a readable zip file: {exc}") from None

        def read(ref: Any) -> bytes:
            with zipfile.ZipFile(path) as z:
                return z.read(str(ref))

    found: dict[tuple[str | None, str], dict[str, Any]] = {}
    beside = 0
    truth_ref = None
    for parts, ref in entries:
        if len(parts) == 1:  # README, LICENSE, a table of findings: not part of the pairs
            if parts[0].lower() == TRUTH_FILE:
                truth_ref = ref
            else:
                beside += 1
            continue
        got = _role(parts)
        if got is None:
            raise DatasetError(
                f"a file in {'/'.join(parts[:-1]) or 'the top level'!r} is outside the "
                "images/ and masks/ folders of a segmentation dataset"
            )
        split, role, stem = got
        slot = found.setdefault((split, stem), {})
        if role in slot:
            raise DatasetError(
                f"two files in {_where(split, role)!r} have the same name without extensions"
            )
        slot[role] = ref
    unpaired = [(k, v) for k, v in found.items() if set(v) != {"image", "mask"}]
    if unpaired:
        (split, _), slot = unpaired[0]
        missing = "mask" if "image" in slot else "image"
        raise DatasetError(
            f"{len(unpaired)} file(s) have no partner: e.g. a file in "
            f"{_where(split, 'image' if missing == 'mask' else 'mask')!r} has no {missing} of "
            f"the same name in {_where(split, missing)!r}"
        )
    if not found:
        raise DatasetError("no image + mask pairs found (images/ and masks/ folders)")
    records: list[PairRecord] = []
    empty = 0
    for (split, stem), slot in sorted(found.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        image, mask_png, img, label_map = _pair(
            read(slot["image"]),
            read(slot["mask"]),
            labels=labels,
            limits=limits,
            deid=deid,
            split=split,
        )
        pixels = np.bincount(label_map.ravel(), minlength=len(labels)).tolist()
        empty += not any(pixels[1:])
        key = hashlib.sha256(
            hashlib.sha256(image).digest() + hashlib.sha256(mask_png).digest()
        ).hexdigest()
        records.append(
            PairRecord(
                split=split,
                stem=stem,
                image=str(slot["image"]),
                mask=str(slot["mask"]),
                height=img.height,
                width=img.width,
                channels=img.channels,
                pixels=[int(n) for n in pixels],
                key=key,
            )
        )
        _check_count(len(records))
    warnings = []
    if empty:
        warnings.append(f"{empty} mask(s) have no foreground pixel")
    if beside:
        warnings.append(f"{beside} file(s) at the top level were not imported")
    refs = {r.stem + "\x00" + (r.split or ""): found[(r.split, r.stem)] for r in records}
    truth = None if truth_ref is None else _truth(read(truth_ref), {r.stem for r in records})

    def reader(recs: list[PairRecord]) -> Iterator[tuple[bytes, bytes]]:
        for r in recs:
            slot = refs[r.stem + "\x00" + (r.split or "")]
            image, mask_png, _, _ = _pair(
                read(slot["image"]),
                read(slot["mask"]),
                labels=labels,
                limits=limits,
                deid=deid,
                split=r.split,
            )
            yield image, mask_png

    return PairSource(records=records, labels=labels, reader=reader, warnings=warnings, truth=truth)


def _truth(data: bytes, stems: set[str]) -> tuple[bytes, int]:
    """The ground-truth stenosis table (`stenoses.csv`, as `clearscan datasets synth-angio`
    writes it): UTF-8 CSV with at least the columns `image` and `percent_stenosis`, each row's
    image one of the dataset's, each percentage a number from 0 to 100. (bytes, rows)."""
    import csv

    if len(data) > MAX_TRUTH_BYTES:
        raise DatasetError(f"{TRUTH_FILE} is larger than {MAX_TRUTH_BYTES // 2**20} MB")
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{TRUTH_FILE} is not a UTF-8 CSV table ({exc})") from None
    if rows and not {"image", "percent_stenosis"} <= set(rows[0]):
        raise DatasetError(f"{TRUTH_FILE} needs the columns image and percent_stenosis")
    for n, row in enumerate(rows, start=2):
        if (row.get("image") or "").split(".", 1)[0] not in stems:
            raise DatasetError(f"{TRUTH_FILE} line {n} names an image the dataset does not have")
        try:
            value = float(row.get("percent_stenosis") or "nan")
        except ValueError:
            value = float("nan")
        if not 0.0 <= value <= 100.0:
            raise DatasetError(f"{TRUTH_FILE} line {n}: percent_stenosis is not 0-100")
    return data, len(rows)


def store_pairs(db: Session, blobs: BlobStore, src: PairSource, options: ImportOptions) -> Dataset:
    """Store a checked segmentation source as a dataset (not committed): each item an image and
    its label map. Splits are stratified by each item's most present class; `counts` per split
    are the items showing each class."""
    records = src.records
    channels = Counter(r.channels for r in records)
    if len(channels) > 1:
        seen = ", ".join(f"{c} channel(s): {n} images" for c, n in sorted(channels.items()))
        raise DatasetError(f"images of mixed channel counts ({seen})")
    tops = np.array([r.top_label for r in records], dtype=np.int64)
    splits, split_info = _assign_splits(
        [r.split for r in records], tops, groups=None, keys=[r.key for r in records]
    )
    digests: list[str] = []
    masks: list[str] = []
    batch: list[bytes] = []
    for image, mask in src.reader(records):
        batch += [image, mask]
        if len(batch) >= BLOB_BATCH:
            stored = blobs.put_batch(batch)
            digests += stored[0::2]
            masks += stored[1::2]
            batch = []
    stored = blobs.put_batch(batch)
    digests += stored[0::2]
    masks += stored[1::2]
    if len(digests) != len(records):  # the source changed between the two passes
        raise DatasetError("the source changed while it was being imported")
    counts: dict[str, dict[str, int]] = {}
    pixels: dict[str, int] = dict.fromkeys(src.labels, 0)
    for r, s in zip(records, splits, strict=True):
        per = counts.setdefault(s, dict.fromkeys(src.labels, 0))
        for label, n in zip(src.labels, r.pixels, strict=True):
            per[label] += n > 0
            pixels[label] += n
    total = max(1, sum(pixels.values()))
    heights = [r.height for r in records]
    widths = [r.width for r in records]
    canon = json.dumps(
        {"classes": src.labels, "items": sorted(zip(splits, digests, masks, strict=True))},
        separators=(",", ":"),
    )
    ds = Dataset(
        id=uuid.uuid4().hex,
        name=options.name,
        kind="segmentation",
        source_format="pairs",
        content_hash=hashlib.sha256(canon.encode()).hexdigest(),
        classes=src.labels,
        counts=counts,
        n_items=len(records),
        info={
            "channels": records[0].channels,
            "height": {"min": min(heights), "max": max(heights)},
            "width": {"min": min(widths), "max": max(widths)},
            "splits": split_info,
            "pixel_share": {k: round(v / total, 6) for k, v in pixels.items()},
            **(
                {"stenoses_blob": blobs.put(src.truth[0]), "stenoses": src.truth[1]}
                if src.truth
                else {}
            ),
            "warnings": list(src.warnings),
        },
    )
    db.add(ds)
    db.flush()
    rows = [
        {
            "dataset_id": ds.id,
            "idx": i,
            "split": s,
            "label": r.top_label,
            "blob": d,
            "mask_blob": m,
            "height": r.height,
            "width": r.width,
        }
        for i, (r, s, d, m) in enumerate(zip(records, splits, digests, masks, strict=True))
    ]
    for start in range(0, len(rows), 5000):
        db.execute(insert(DatasetItem), rows[start : start + 5000])
    return ds
