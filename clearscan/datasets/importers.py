"""Readers for the three dataset sources. Each one validates everything before anything is
stored, and streams: no source is loaded whole into memory.

- image folder: `<class>/<image>` or `<split>/<class>/<image>` (split: train, val, test), as a
  folder or a .zip of one; PNG, JPEG or DICOM (sniffed from the content, never the name);
- MedMNIST .npz: `<split>_images` (N x H x W or N x H x W x C, uint8) and `<split>_labels`;
- CSV: a header row, a target column, optional time and group columns (sensor streams)."""

from __future__ import annotations

import csv
import hashlib
import io
import math
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from clearscan.errors import Unprocessable
from clearscan.imaging import ImagingError, Limits, decode
from clearscan.imaging.deid import DeidPolicy, deidentify, is_dicom

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
MAX_ITEMS = 2_000_000
MAX_IMAGE_BYTES = 64 * 2**20


class DatasetError(Unprocessable):
    """A dataset cannot be imported; the message names the file, array or column (422 unless a
    subclass says otherwise)."""


@dataclass
class ImageRecord:
    split: str | None  # None: the source has no split folders
    label: str
    height: int
    width: int
    channels: int
    source: str  # path inside the source, for messages and to read it again
    index: int = -1  # npz row
    key: str = ""  # order-independent identity (content digest, or npz split and row)


@dataclass
class ImageSource:
    """Validated records plus a way to read each image's bytes again (second pass)."""

    fmt: str  # folder | npz
    records: list[ImageRecord]
    classes: list[str]
    reader: Any  # callable(records) -> iterator of bytes, in order


# --- image folders (a directory or a zip of one) ---------------------------------------------


def describe(parts: tuple[str, ...]) -> str:
    """An entry of an image folder or zip for messages: its folders (split and class), never
    its file name, which may name a patient."""
    return f"a file in {'/'.join(parts[:-1])!r}" if len(parts) > 1 else "a file at the top level"


def _layout(parts: tuple[str, ...], where: str) -> tuple[str | None, str]:
    if len(parts) >= 3 and parts[-3].lower() in _SPLIT_ALIASES:
        return _SPLIT_ALIASES[parts[-3].lower()], parts[-2]
    if len(parts) >= 2:
        return None, parts[-2]
    raise DatasetError(
        f"{describe(parts)}: images must be inside one folder per class (<class>/<image>)"
    )


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _folder_entries(root: Path) -> Iterator[tuple[tuple[str, ...], Path]]:
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if _hidden(rel) or p.is_dir():
            continue
        if p.is_symlink():
            raise DatasetError(f"{describe(rel)}: symbolic links are not followed")
        yield rel, p


def _zip_members(zf: zipfile.ZipFile, max_bytes: int) -> list[tuple[tuple[str, ...], str]]:
    out = []
    total = 0
    for m in zf.infolist():
        if m.is_dir():
            continue
        parts = PurePosixPath(m.filename).parts
        if m.filename.startswith(("/", "\\")) or ".." in parts or "\\" in m.filename:
            raise DatasetError("a zip entry points outside the dataset (an absolute or .. path)")
        if _hidden(parts):
            continue
        total += m.file_size
        if total > max_bytes:
            raise DatasetError(f"zip unpacks to more than {max_bytes / 2**20:.0f} MB; refusing")
        if m.file_size > MAX_IMAGE_BYTES:
            raise DatasetError(f"{describe(parts)}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
        out.append((parts, m.filename))
    tops = {p[0] for p, _ in out}
    if len(tops) == 1 and any(len(p) >= 3 for p, _ in out):  # one wrapping folder
        only = next(iter(tops))
        if only.lower() not in _SPLIT_ALIASES:  # a file beside its class folders then fails
            out = [(p[1:], name) for p, name in out]
    return out


def _clean(data: bytes, deid: DeidPolicy | None, limits: Limits) -> bytes:
    """A DICOM item de-identified like an analysis upload (no original kept); other formats as
    they are. Deterministic, so both passes over the source see the same bytes."""
    if deid is None or not deid.enabled or not is_dicom(data):
        return data
    return deidentify(data, policy=replace(deid, keep_originals=False), limits=limits).data


def _record(
    data: bytes, parts: tuple[str, ...], limits: Limits, deid: DeidPolicy | None = None
) -> ImageRecord:
    where = "/".join(parts)
    split, label = _layout(parts, where)
    try:
        data = _clean(data, deid, limits)
        img = decode(data, limits=limits)
    except ImagingError as exc:
        raise DatasetError(f"{describe(parts)}: {exc.detail}") from None
    key = hashlib.sha256(data).hexdigest()
    return ImageRecord(split, label, img.height, img.width, img.channels, where, key=key)


def read_image_folder(
    path: Path, *, limits: Limits, max_bytes: int, deid: DeidPolicy | None = None
) -> ImageSource:
    """An image folder (or a zip of one); DICOM items de-identified under `deid` when given."""
    records: list[ImageRecord] = []
    if path.is_dir():
        files = {}
        for parts, p in _folder_entries(path):
            if p.stat().st_size > MAX_IMAGE_BYTES:
                raise DatasetError(f"{describe(parts)}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
            records.append(_record(p.read_bytes(), parts, limits, deid))
            files[records[-1].source] = p
            _check_count(len(records))

        def read_dir(recs: list[ImageRecord]) -> Iterator[bytes]:
            for r in recs:
                yield _clean(files[r.source].read_bytes(), deid, limits)

        return ImageSource("folder", records, _classes(records), read_dir)

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"not a readable zip file: {exc}") from None
    with zf:
        members = _zip_members(zf, max_bytes)
        names = {}
        for parts, name in members:
            records.append(_record(zf.read(name), parts, limits, deid))
            names[records[-1].source] = name
            _check_count(len(records))

    def read_zip(recs: list[ImageRecord]) -> Iterator[bytes]:
        with zipfile.ZipFile(path) as z:
            for r in recs:
                yield _clean(z.read(names[r.source]), deid, limits)

    return ImageSource("folder", records, _classes(records), read_zip)


def _check_count(n: int) -> None:
    if n > MAX_ITEMS:
        raise DatasetError(f"more than {MAX_ITEMS} images; split the dataset")


def _classes(records: list[ImageRecord]) -> list[str]:
    if not records:
        raise DatasetError("no images found")
    splits = {r.split for r in records}
    if None in splits and len(splits) > 1:
        raise DatasetError(
            "mixed layouts: some images are in <split>/<class>/ folders and some in <class>/"
        )
    return sorted({r.label for r in records})


# --- MedMNIST .npz (streamed row by row from the zip) -----------------------------------------


def _npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype[Any], bool]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as exc:
        raise DatasetError(f"{where}: not a NumPy array: {exc}") from None
    if dtype.hasobject:
        raise DatasetError(f"{where}: object arrays are refused (they would need pickle)")
    return shape, dtype, fortran


def _read_labels(zf: zipfile.ZipFile, member: str, n: int) -> np.ndarray:
    with zf.open(member) as f:
        shape, dtype, _fortran = _npy_header(f, member)
        if not shape or shape[0] != n or math.prod(shape[1:]) != 1:
            raise DatasetError(f"{member}: shape {list(shape)}, expected [{n}] or [{n}, 1]")
        raw = f.read(n * dtype.itemsize)
    labels = np.frombuffer(raw, dtype=dtype, count=n)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{member}: labels must be integers, got {labels.dtype}")
    if labels.min() < 0:
        raise DatasetError(f"{member}: negative label {int(labels.min())}")
    return labels.astype(np.int64)


def read_npz(path: Path, *, class_names: list[str] | None) -> ImageSource:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"not a readable .npz file: {exc}") from None
    with zf:
        arrays = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
        found = [s for s in SPLITS if f"{s}_images" in arrays and f"{s}_labels" in arrays]
        if "train" not in found:
            raise DatasetError(
                "the .npz needs train_images and train_labels arrays (MedMNIST layout); "
                f"found: {sorted(arrays) or 'none'}"
            )
        records: list[ImageRecord] = []
        shapes: dict[str, tuple[int, ...]] = {}
        max_label = 0
        for split in found:
            member = f"{split}_images.npy"
            with zf.open(member) as f:
                shape, dtype, fortran = _npy_header(f, member)
            if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
                raise DatasetError(f"{member}: shape {list(shape)}, expected N x H x W [x C]")
            if dtype != np.uint8 or fortran:
                raise DatasetError(f"{member}: expected C-ordered uint8 pixels, got {dtype}")
            shapes[split] = shape
            labels = _read_labels(zf, f"{split}_labels.npy", shape[0])
            max_label = max(max_label, int(labels.max()) if labels.size else 0)
            channels = shape[3] if len(shape) == 4 else 1
            records += [
                ImageRecord(
                    split, str(int(v)), shape[1], shape[2], channels, member, i, f"{split}:{i:09d}"
                )
                for i, v in enumerate(labels)
            ]
            _check_count(len(records))
    n_classes = max_label + 1
    if class_names is not None:
        if len(class_names) < n_classes:
            raise DatasetError(
                f"--labels names {len(class_names)} classes but the labels go up to {max_label}"
            )
        names = class_names
    else:
        names = [str(i) for i in range(n_classes)]
    for r in records:
        r.label = names[int(r.label)]

    def read_rows(recs: list[ImageRecord]) -> Iterator[bytes]:
        from PIL import Image

        with zipfile.ZipFile(path) as z:
            for split in found:
                shape = shapes[split]
                row = math.prod(shape[1:])
                with z.open(f"{split}_images.npy") as f:
                    _npy_header(f, split)
                    for _ in range(shape[0]):
                        arr = np.frombuffer(f.read(row), dtype=np.uint8).reshape(shape[1:])
                        if arr.ndim == 3 and arr.shape[2] == 1:
                            arr = arr[:, :, 0]
                        buf = io.BytesIO()
                        Image.fromarray(arr).save(buf, format="PNG")
                        yield buf.getvalue()

    return ImageSource("npz", records, names, read_rows)


# --- CSV tables ---------------------------------------------------------------------------------


@dataclass
class ColumnStats:
    name: str
    numeric_ok: int = 0
    non_numeric: int = 0
    first_bad: tuple[int, str] | None = None  # row number, value
    missing: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    values: set[str] = field(default_factory=set)  # distinct values, capped
    distinct_capped: bool = False

    def add(self, value: str, row: int) -> None:
        v = value.strip()
        if v == "" or v.lower() in {"na", "nan", "null", "none"}:
            self.missing += 1
            return
        if len(self.values) < 1000:
            self.values.add(v)
        else:
            self.distinct_capped = True
        try:
            x = float(v)
            if not math.isfinite(x):
                raise ValueError(v)
        except ValueError:
            self.non_numeric += 1
            if self.first_bad is None:
                self.first_bad = (row, v[:40])
            return
        self.numeric_ok += 1
        self.total += x
        self.total_sq += x * x
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)

    @property
    def numeric(self) -> bool:
        return self.numeric_ok > 0 and self.numeric_ok >= self.non_numeric

    def summary(self) -> dict[str, Any]:
        n = self.numeric_ok
        out: dict[str, Any] = {
            "name": self.name,
            "type": "numeric" if self.numeric else "categorical",
            "missing": self.missing,
            "distinct": f">{len(self.values)}" if self.distinct_capped else len(self.values),
        }
        if self.numeric and n:
            mean = self.total / n
            var = max(self.total_sq / n - mean * mean, 0.0)
            out.update(min=self.lo, max=self.hi, mean=round(mean, 6), std=round(math.sqrt(var), 6))
        elif not self.distinct_capped:
            out["values"] = sorted(self.values)[:20]
        return out

    @property
    def constant(self) -> bool:
        return not self.distinct_capped and len(self.values) <= 1


@dataclass
class TableSource:
    columns: list[dict[str, Any]]
    rows: int
    targets: list[str]  # per row, as text
    groups: list[str] | None  # per row, when a group column is given
    splits: list[str] | None  # per row, when the CSV has a `split` column
    classes: list[str]
    constant: list[str]
    feature_columns: list[str]


def read_csv(
    path: Path, *, target: str | None, time_column: str | None, group_column: str | None
) -> TableSource:
    if not target:
        raise DatasetError("a CSV dataset needs a target column (the class column): give its name")
    try:
        f = path.open(encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise DatasetError(f"cannot read the CSV: {exc.strerror}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError("the CSV is empty") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"not a UTF-8 CSV file: {exc}") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise DatasetError("the CSV header has duplicate column names")
        for role, col in (("target", target), ("time", time_column), ("group", group_column)):
            if col is not None and col not in header:
                raise DatasetError(
                    f"{role} column {col!r} is not in the CSV (columns: {', '.join(header[:30])})"
                )
        stats = [ColumnStats(h) for h in header]
        t_i = header.index(target)
        g_i = header.index(group_column) if group_column else None
        s_i = header.index("split") if "split" in header else None
        targets: list[str] = []
        groups: list[str] | None = [] if g_i is not None else None
        splits: list[str] | None = [] if s_i is not None else None
        try:
            for row_no, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DatasetError(
                        f"row {row_no} has {len(row)} fields, the header has {len(header)}"
                    )
                for st, value in zip(stats, row, strict=True):
                    st.add(value, row_no)
                t = row[t_i].strip()
                if t == "":
                    raise DatasetError(f"row {row_no}: the target column {target!r} is empty")
                targets.append(t)
                if groups is not None and g_i is not None:
                    groups.append(row[g_i].strip())
                if splits is not None and s_i is not None:
                    split_name = _SPLIT_ALIASES.get(row[s_i].strip().lower())
                    if split_name is None:
                        # row numbers and column names only: a cell may hold an identifier
                        raise DatasetError(
                            f"row {row_no}: the split column holds a value that is not one of "
                            "train, val, test"
                        )
                    splits.append(split_name)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DatasetError(f"not a valid UTF-8 CSV file: {exc}") from None
    if not targets:
        raise DatasetError("the CSV has a header but no rows")
    special = {target, time_column, group_column, "split"}
    for st in stats:
        if st.name in special:
            continue
        if st.numeric and st.non_numeric and st.first_bad:
            row_no, _value = st.first_bad
            raise DatasetError(
                f"column {st.name!r} is numeric but row {row_no} holds a non-numeric value "
                f"({st.non_numeric} non-numeric values in all)"
            )
    classes = sorted(set(targets), key=_natural)
    if len(classes) < 2:
        raise DatasetError(
            f"the target column {target!r} holds one class in all {len(targets)} rows; "
            "a classifier needs at least two"
        )
    features = [st.name for st in stats if st.name not in special]
    return TableSource(
        columns=[st.summary() for st in stats],
        rows=len(targets),
        targets=targets,
        groups=groups,
        splits=splits,
        classes=classes,
        constant=[st.name for st in stats if st.name in features and st.constant],
        feature_columns=features,
    )


def _natural(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
