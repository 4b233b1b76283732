"""Dataset import and queries. An import reads and checks the whole source first (nothing is
stored when anything is wrong), then writes the images (or the CSV) as blobs with one file-system
sync, then commits the dataset row with its items and an audit event in one transaction."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, NamedTuple

import numpy as np
from sqlalchemy import func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.datasets.importers import (
    SPLITS,
    DatasetError,
    ImageSource,
    TableSource,
    read_csv,
    read_image_folder,
    read_npz,
)
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.datasets.pairs import is_pairs_layout, read_pairs, store_pairs
from clearscan.datasets.splits import BLOB_BATCH, _assign_splits
from clearscan.errors import Conflict, NotFound, TooLarge
from clearscan.imaging import Limits
from clearscan.imaging.deid import DeidPolicy
from clearscan.storage.base import BlobStore
from clearscan.teams import service as teams
from clearscan.teams.service import Scope

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
TINY_CLASS = 10  # fewer items of a class in a split than this: warned


class DatasetExists(Conflict, DatasetError):
    """A dataset of this name exists; datasets are immutable (409)."""


class DatasetNotFound(NotFound, DatasetError):
    pass


class DatasetStorageError(DatasetError):
    """The disk, not the data: the import could not be written (507)."""

    status_code = 507
    title = "Storage full or failing"


@dataclass(frozen=True)
class ImportOptions:
    name: str
    target: str | None = None  # CSV: the class column
    time_column: str | None = None  # CSV sensor streams
    group_column: str | None = None  # CSV sensor streams: one recording per group
    labels: list[str] | None = None  # .npz: class names for label 0, 1, ...
    license: str | None = None  # licence / attribution of the data, copied into model cards


def detect_format(path: Path) -> str:
    """folder | npz | csv, from the content (the client's file name is never trusted)."""
    if path.is_dir():
        names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
        return "pairs" if is_pairs_layout(names) else "folder"
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise DatasetError(f"cannot read {path.name}: {exc.strerror}") from None
    if head[:4] == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        except zipfile.BadZipFile as exc:
            raise DatasetError(f"not a readable zip file: {exc}") from None
        npy = [n for n in names if n.endswith(".npy")]
        if npy and len(npy) == len(names):
            return "npz"
        return "pairs" if is_pairs_layout(names) else "folder"
    if head[:2] == b"\x80\x04" or head[:1] == b"\x80":
        raise DatasetError("pickle files are refused (unpickling runs arbitrary code)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a multi-byte character cut at the end
            raise DatasetError(
                "not a dataset: expected a folder, a .zip of class folders, a MedMNIST .npz "
                "or a UTF-8 CSV"
            ) from None
    return "csv"


@contextmanager
def spooled(
    src: IO[bytes], tmp_dir: Path, *, max_bytes: int | None = None
) -> Iterator[tuple[Path, int]]:
    """`src` copied, a megabyte at a time, to a temporary file in `tmp_dir` (the data dir; never
    under the client's file name), removed afterwards: (its path, its size). TooLarge (413) past
    `max_bytes`."""
    with tempfile.NamedTemporaryFile(dir=tmp_dir, prefix=".dataset-") as tmp:
        if max_bytes is None:
            shutil.copyfileobj(src, tmp, length=1 << 20)
        else:
            size = 0
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"the upload is over its limit of {max_bytes / 2**20:g} MiB")
                tmp.write(chunk)
        tmp.flush()
        yield Path(tmp.name), tmp.tell()


def import_upload(
    *,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    upload: BinaryIO,
    tmp_dir: Path,
    options: ImportOptions,
    limits: Limits,
    max_bytes: int,
    team_id: int | None = None,
    deid: DeidPolicy | None = None,
) -> Dataset:
    """Import an uploaded file: it goes to a temporary file in `tmp_dir` (see `spooled`)."""
    with spooled(upload, tmp_dir) as (path, _):
        return import_dataset(
            db=db,
            blobs=blobs,
            ctx=ctx,
            source=path,
            options=options,
            limits=limits,
            max_bytes=max_bytes,
            team_id=team_id,
            deid=deid,
        )


def check_name(*, db: Session, name: str) -> None:
    """DatasetError (422) for a name that breaks the pattern, DatasetExists (409) for a taken
    one: what can be refused before any data is read."""
    if not NAME.match(name):
        raise DatasetError(
            "name: lower-case letters, digits, '.', '_' and '-', at most 64 characters"
        )
    if db.scalar(select(Dataset.id).where(Dataset.name == name)) is not None:
        raise DatasetExists(f"a dataset named {name!r} exists; datasets are immutable")


def record_rejection(*, db: Session, ctx: audit.RequestContext, reason: str) -> None:
    """Audit a refused import, committed at once (nothing of the import is in the
    transaction)."""
    audit.record(
        audit.Entry(Action.DATASET_IMPORT, outcome="rejected", details={"reason": reason[:500]}),
        db=db,
        ctx=ctx,
    )


def import_dataset(
    *,
    db: Session,
    blobs: BlobStore,
    ctx: audit.RequestContext,
    source: Path,
    options: ImportOptions,
    limits: Limits,
    max_bytes: int,
    before_commit: Callable[[Session, Dataset], None] | None = None,
    team_id: int | None = None,
    deid: DeidPolicy | None = None,
) -> Dataset:
    """Import `source` (a folder, a .zip, a .npz or a CSV) as the dataset `options` names, of
    team `team_id` (None: the team general): the
    dataset, its items and its audit event commit in one transaction. `before_commit(db,
    dataset)` runs in that transaction once the dataset is written (a job ends itself there, so
    the dataset and the job's end commit together); when it raises, nothing is committed."""
    try:
        check_name(db=db, name=options.name)
        fmt = detect_format(source)
        if fmt == "csv":
            ds = _import_table(db, blobs, source, options)
        elif fmt == "pairs":
            pairs = read_pairs(
                source, labels=options.labels, limits=limits, max_bytes=max_bytes, deid=deid
            )
            ds = store_pairs(db, blobs, pairs, options)
        else:
            src = (
                read_npz(source, class_names=options.labels)
                if fmt == "npz"
                else read_image_folder(source, limits=limits, max_bytes=max_bytes, deid=deid)
            )
            ds = _import_images(db, blobs, src, options)
    except IntegrityError:  # another import took the name meanwhile
        db.rollback()
        detail = f"a dataset named {options.name!r} exists; datasets are immutable"
        record_rejection(db=db, ctx=ctx, reason=detail)
        raise DatasetExists(detail) from None
    except OSError as exc:  # the disk, not the data: nothing is committed
        db.rollback()
        raise DatasetStorageError(f"storage error while importing: {exc.strerror or exc}") from None
    except DatasetError as exc:
        record_rejection(db=db, ctx=ctx, reason=exc.detail)
        raise
    ds.created_by = ctx.actor
    ds.team_id = team_id if team_id is not None else teams.default_team_id(db=db)
    if options.license:
        ds.info = {**ds.info, "license": options.license[:2000]}
    try:
        # first: a job's row is locked before the audit chain's head, as a cancel locks them
        if before_commit is not None:
            before_commit(db, ds)
        audit.append(
            audit.Entry(
                Action.DATASET_IMPORT,
                object_type="dataset",
                object_id=ds.id,
                details={"name": ds.name, "hash": ds.content_hash, "items": ds.n_items},
            ),
            db=db,
            ctx=ctx,
        )
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return ds


# --- images -------------------------------------------------------------------------------------


def _import_images(
    db: Session, blobs: BlobStore, src: ImageSource, options: ImportOptions
) -> Dataset:
    records = src.records
    channels = Counter(r.channels for r in records)
    if len(channels) > 1:
        seen = ", ".join(f"{c} channel(s): {n} images" for c, n in sorted(channels.items()))
        example = next(r.label for r in records if r.channels != channels.most_common(1)[0][0])
        raise DatasetError(
            f"images of mixed channel counts ({seen}); e.g. one of class {example!r}"
        )
    if len(src.classes) < 2:
        raise DatasetError(
            f"only one class ({src.classes[0]!r}); a classifier needs at least two class folders"
        )
    class_index = {c: i for i, c in enumerate(src.classes)}
    labels = np.array([class_index[r.label] for r in records], dtype=np.int64)
    given = [r.split for r in records]
    splits, split_info = _assign_splits(given, labels, groups=None, keys=[r.key for r in records])
    # second pass: store the bytes (one file-system sync per batch)
    digests: list[str] = []
    batch: list[bytes] = []
    for data in src.reader(records):
        batch.append(data)
        if len(batch) >= BLOB_BATCH:
            digests += blobs.put_batch(batch)
            batch = []
    digests += blobs.put_batch(batch)
    if len(digests) != len(records):  # the source changed between the two passes
        raise DatasetError("the source changed while it was being imported")
    counts = _counts(splits, labels, src.classes)
    warnings = _class_warnings(counts)
    by_digest: dict[str, set[str]] = defaultdict(set)
    per_split = Counter(zip(digests, splits, strict=True))
    for d, s in per_split:
        by_digest[d].add(s)
    across = sum(1 for ss in by_digest.values() if len(ss) > 1)
    if across:
        warnings.append(
            f"{across} image(s) appear in more than one split (identical bytes): "
            "evaluation on those splits is optimistic"
        )
    within = sum(n - 1 for n in per_split.values())
    if within > 0:
        warnings.append(f"{within} duplicate image(s) within a split")
    heights = [r.height for r in records]
    widths = [r.width for r in records]
    canon = json.dumps(
        {
            "classes": src.classes,
            "items": sorted(zip(splits, labels.tolist(), digests, strict=True)),
        },
        separators=(",", ":"),
    )
    ds = Dataset(
        id=uuid.uuid4().hex,
        name=options.name,
        kind="images",
        source_format=src.fmt,
        content_hash=hashlib.sha256(canon.encode()).hexdigest(),
        classes=src.classes,
        counts=counts,
        n_items=len(records),
        info={
            "channels": records[0].channels,
            "height": {"min": min(heights), "max": max(heights)},
            "width": {"min": min(widths), "max": max(widths)},
            "splits": split_info,
            "warnings": warnings,
        },
    )
    db.add(ds)
    db.flush()
    rows = [
        {
            "dataset_id": ds.id,
            "idx": i,
            "split": s,
            "label": int(lab),
            "blob": d,
            "height": r.height,
            "width": r.width,
        }
        for i, (r, s, lab, d) in enumerate(zip(records, splits, labels, digests, strict=True))
    ]
    for start in range(0, len(rows), 5000):
        db.execute(insert(DatasetItem), rows[start : start + 5000])
    return ds


# --- tables -------------------------------------------------------------------------------------


def _import_table(db: Session, blobs: BlobStore, source: Path, options: ImportOptions) -> Dataset:
    table: TableSource = read_csv(
        source,
        target=options.target,
        time_column=options.time_column,
        group_column=options.group_column,
    )
    class_index = {c: i for i, c in enumerate(table.classes)}
    labels = np.array([class_index[t] for t in table.targets], dtype=np.int64)
    splits, split_info = _assign_splits(
        table.splits or [None] * table.rows, labels, groups=table.groups
    )
    csv_blob = blobs.put_file(source)
    split_blob = blobs.put(bytes(SPLITS.index(s) for s in splits))
    counts = _counts(splits, labels, table.classes)
    warnings = _class_warnings(counts, noun="rows")
    if table.constant:
        warnings.append(f"constant column(s), no information: {', '.join(table.constant[:20])}")
    canon = json.dumps(
        {
            "csv": csv_blob,
            "splits": split_blob,
            "target": options.target,
            "time": options.time_column,
            "group": options.group_column,
        },
        sort_keys=True,
    )
    ds = Dataset(
        id=uuid.uuid4().hex,
        name=options.name,
        kind="table",
        source_format="csv",
        content_hash=hashlib.sha256(canon.encode()).hexdigest(),
        classes=table.classes,
        counts=counts,
        n_items=table.rows,
        info={
            "target": options.target,
            "time_column": options.time_column,
            "group_column": options.group_column,
            "feature_columns": table.feature_columns,
            "columns": table.columns,
            "csv_blob": csv_blob,
            "split_blob": split_blob,
            "splits": split_info,
            "warnings": warnings,
        },
    )
    db.add(ds)
    db.flush()
    return ds


# --- splits and summaries -----------------------------------------------------------------------


def _counts(splits: Sequence[str], labels: np.ndarray, classes: list[str]) -> dict[str, Any]:
    out: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        mask = np.array([x == s for x in splits], dtype=bool)
        if mask.any():
            bc = np.bincount(labels[mask], minlength=len(classes))
            out[s] = {c: int(n) for c, n in zip(classes, bc, strict=True)}
    return out


def _class_warnings(counts: dict[str, dict[str, int]], noun: str = "images") -> list[str]:
    out = []
    for split, per in counts.items():
        for c, n in per.items():
            if n < TINY_CLASS:
                out.append(f"class {c!r} has only {n} {noun} in {split}")
    return out


# --- queries ------------------------------------------------------------------------------------


def get(*, db: Session, ref: str, scope: Scope | None = None) -> Dataset:
    """By id or by name; DatasetNotFound for neither, and for a dataset `scope` may not see
    (None: every dataset)."""
    ds = db.get(Dataset, ref) or db.scalar(select(Dataset).where(Dataset.name == ref))
    missing = DatasetNotFound(f"dataset {ref!r} not found")
    if ds is None:
        raise missing
    teams.check(
        db=db,
        scope=scope,
        team_id=ds.team_id,
        object_type="dataset",
        object_id=ds.id,
        missing=missing,
    )
    return ds


def list_datasets(
    *, db: Session, limit: int, offset: int, scope: Scope | None = None
) -> tuple[list[Dataset], int]:
    """Datasets `scope` may see (None: all), newest first."""
    q = select(Dataset)
    if scope is not None:
        q = q.where(scope.where(Dataset.team_id))
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(
        q.order_by(Dataset.created_at.desc(), Dataset.id).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def samples(*, db: Session, ds: Dataset, per_class: int = 4) -> list[DatasetItem]:
    """A few items per split and class (the first ones), for the sample grid."""
    out: list[DatasetItem] = []
    for split, per in ds.counts.items():
        for label, _ in enumerate(per):
            out += db.scalars(
                select(DatasetItem)
                .where(
                    DatasetItem.dataset_id == ds.id,
                    DatasetItem.split == split,
                    DatasetItem.label == label,
                )
                .order_by(DatasetItem.idx)
                .limit(per_class)
            ).all()
    return out


def item(*, db: Session, ds: Dataset, idx: int) -> DatasetItem:
    row = db.get(DatasetItem, (ds.id, idx))
    if row is None:
        raise DatasetNotFound(f"dataset {ds.name!r} has no item {idx}")
    return row


class DatasetBrief(NamedTuple):
    """What a list or a form shows of a dataset, without its items or column summaries."""

    id: str
    name: str
    kind: str
    n_items: int
    classes: list[str]
    splits: list[str]


_BRIEF = (Dataset.id, Dataset.name, Dataset.kind, Dataset.n_items, Dataset.classes, Dataset.counts)


def _brief(row: Any) -> DatasetBrief:
    return DatasetBrief(
        row.id, row.name, row.kind, row.n_items, list(row.classes or []), list(row.counts or {})
    )


def briefs(*, db: Session, refs: Iterable[str]) -> dict[str, DatasetBrief]:
    """The datasets these ids or names name, keyed by both id and name (a training run or an
    evaluation names its dataset either way); references to no dataset are left out."""
    wanted = {r for r in refs if r}
    if not wanted:
        return {}
    rows = db.execute(select(*_BRIEF).where(or_(Dataset.id.in_(wanted), Dataset.name.in_(wanted))))
    out: dict[str, DatasetBrief] = {}
    for row in rows:
        brief = _brief(row)
        out[brief.id] = out[brief.name] = brief
    return out


def choices(
    *, db: Session, order: Literal["name", "newest"] = "name", limit: int = 1000
) -> list[DatasetBrief]:
    """Datasets to pick from in a form, by name or newest first."""
    by = Dataset.name if order == "name" else Dataset.created_at.desc()
    return [_brief(row) for row in db.execute(select(*_BRIEF).order_by(by).limit(limit))]
