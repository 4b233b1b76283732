"""Table datasets as model inputs: the stored CSV read back as typed feature columns (numeric
values, or categories) with class indices and splits; sensor streams cut into windows of
features (see clearscan.training.features); the feature preview the dataset pages show. The
trainer itself is clearscan.training.trainers.tabular."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from clearscan.datasets.importers import SPLITS
from clearscan.datasets.models import Dataset
from clearscan.errors import Unprocessable
from clearscan.storage.base import BlobStore
from clearscan.training.previews import PreviewBounds, PreviewCache, check_bounds, content_key

__all__ = [
    "Table",
    "TabularError",
    "latest_importance",
    "load_table",
    "preview",
]


class TabularError(Unprocessable, ValueError):
    """A table that cannot become features or a model (422)."""


PREVIEWS = PreviewCache(size=32)
"""The feature previews this process computed (keyed by dataset content and parameters)."""


@dataclass
class Table:
    x: np.ndarray  # N x F object array (float or NaN for numeric, str or None for categorical)
    y: np.ndarray  # N class indices
    splits: list[str]
    features: list[dict[str, Any]]  # {name, type}
    window: dict[str, Any] | None = None  # sensor streams: channels, length, step, sample_rate
    groups: list[str] | None = None  # recording of each row (cross-validation keeps them whole)


def load_table(
    blobs: BlobStore, ds: Dataset, *, length: int | None = None, step: int | None = None
) -> Table:
    """The dataset's rows as model inputs; for a sensor stream (time column), one row per
    window of `length` samples moved by `step` (see clearscan.training.features)."""
    raw = _read_rows(blobs, ds)
    info = ds.info
    if not info.get("time_column"):
        return raw
    from clearscan.training import features as wf

    channels = [f["name"] for f in raw.features if f["type"] == "numeric"]
    if not channels:
        raise TabularError("a sensor stream needs numeric channel columns")
    idx = [[f["name"] for f in raw.features].index(c) for c in channels]
    x = raw.x[:, idx].astype(np.float64)
    times = _column(blobs, ds, info["time_column"])
    groups = _column(blobs, ds, info["group_column"]) if info.get("group_column") else None
    rate = wf.sample_rate_of(times)
    length = length or wf.DEFAULT_LENGTH
    step = step or wf.DEFAULT_STEP
    try:
        fx, fy, fsplits, prov = wf.windows(
            x, raw.y, raw.splits, groups, times, length=length, step=step, sample_rate=rate
        )
    except wf.WindowError as exc:
        raise TabularError(str(exc)) from None
    names = wf.feature_names(channels)
    return Table(
        fx.astype(object),
        fy,
        fsplits,
        [{"name": n, "type": "numeric"} for n in names],
        window={"channels": channels, "length": length, "step": step, "sample_rate": rate},
        groups=[p["group"] for p in prov] if groups is not None else None,
    )


def _column(blobs: BlobStore, ds: Dataset, name: str) -> list[str]:
    with blobs.open(ds.info["csv_blob"]) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = [h.strip() for h in next(reader)]
        j = header.index(name)
        return [row[j].strip() for row in reader if row]


def _read_rows(blobs: BlobStore, ds: Dataset) -> Table:
    info = ds.info
    columns = {c["name"]: c for c in info["columns"]}
    names = list(info["feature_columns"])
    target = info["target"]
    class_index = {c: i for i, c in enumerate(ds.classes)}
    with blobs.open(info["csv_blob"]) as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8-sig", newline=""))
        header = [h.strip() for h in next(reader)]
        idx = [header.index(n) for n in names]
        t_i = header.index(target)
        rows: list[list[Any]] = []
        labels: list[int] = []
        numeric = [columns[n]["type"] == "numeric" for n in names]
        for row in reader:
            if not row:
                continue
            out: list[Any] = []
            for j, is_num in zip(idx, numeric, strict=True):
                v = row[j].strip()
                missing = v == "" or v.lower() in {"na", "nan", "null", "none"}
                if is_num:
                    out.append(math.nan if missing else float(v))
                else:
                    out.append(None if missing else v)
            rows.append(out)
            labels.append(class_index[row[t_i].strip()])
    split_bytes = blobs.get(info["split_blob"])
    splits = [SPLITS[b] for b in split_bytes]
    if len(splits) != len(rows):
        raise TabularError("the stored split does not match the table's rows")
    x = np.empty((len(rows), len(names)), dtype=object)
    for i, r in enumerate(rows):
        x[i, :] = r
    features = [
        {"name": n, "type": "numeric" if is_num else "categorical"}
        for n, is_num in zip(names, numeric, strict=True)
    ]
    return Table(x, np.array(labels, dtype=np.int64), splits, features)


def preview(
    db: Any,
    blobs: BlobStore,
    ds: Dataset,
    *,
    length: int | None = None,
    step: int | None = None,
    limit: int = 20,
    bounds: PreviewBounds | None = None,
) -> dict[str, Any]:
    """The feature table a training run would use (first `limit` rows) and the permutation
    importance of the latest model trained on the dataset. Bounded before anything is read
    (PreviewTooLarge, 422, over `bounds`) and cached per dataset content and parameters (see
    clearscan.training.previews); the importance is read afresh each time."""
    from clearscan.training import features as wf

    length = length or wf.DEFAULT_LENGTH
    step = step or wf.DEFAULT_STEP
    check_bounds(ds, length=length, step=step, bounds=bounds or PreviewBounds())
    key = (ds.id, content_key(ds), length, step, limit)
    table_part = PREVIEWS.get(key, lambda: _preview_rows(blobs, ds, length, step, limit))
    return {**table_part, "importance": latest_importance(db, ds)}


def _preview_rows(
    blobs: BlobStore, ds: Dataset, length: int, step: int, limit: int
) -> dict[str, Any]:
    table = load_table(blobs, ds, length=length, step=step)
    names = [f["name"] for f in table.features]

    def cell(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return round(v, 6) if isinstance(v, float) else v

    rows = [
        {
            "split": table.splits[i],
            "label": ds.classes[int(table.y[i])],
            "values": dict(zip(names, (cell(v) for v in table.x[i]), strict=True)),
        }
        for i in range(min(limit, len(table.y)))
    ]
    return {
        "dataset": ds.name,
        "features": table.features,
        "window": table.window,
        "n_rows": len(table.y),
        "rows": rows,
    }


def latest_importance(db: Any, ds: Dataset) -> dict[str, Any] | None:
    """Feature importance of the newest succeeded training run on this dataset."""
    from sqlalchemy import select

    from clearscan.jobs.models import Job

    runs = db.scalars(
        select(Job)
        .where(Job.kind == "train", Job.status == "succeeded")
        .order_by(Job.finished_at.desc())
    ).all()
    for job in runs:
        if job.params.get("dataset") in (ds.name, ds.id) and job.result:
            imp = job.result.get("feature_importance")
            if imp:
                return {"model": job.result.get("model"), "items": imp}
    return None
