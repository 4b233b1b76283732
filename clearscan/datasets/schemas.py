"""Dataset out-models, and a dataset import run as a job."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.jobs.models import Job


class DatasetPublic(BaseModel):
    id: str
    name: str
    kind: str  # images | table
    source_format: str  # folder | npz | csv
    content_hash: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> items
    n_items: int
    warnings: list[str]
    created_at: datetime
    created_by: str | None

    @classmethod
    def of(cls, ds: Dataset) -> DatasetPublic:
        return cls(
            id=ds.id,
            name=ds.name,
            kind=ds.kind,
            source_format=ds.source_format,
            content_hash=ds.content_hash,
            classes=list(ds.classes),
            counts=dict(ds.counts),
            n_items=ds.n_items,
            warnings=list(ds.info.get("warnings", [])),
            created_at=ds.created_at,
            created_by=ds.created_by,
        )


class SampleItem(BaseModel):
    idx: int
    split: str
    label: str
    height: int
    width: int
    image_url: str


class DatasetDetail(DatasetPublic):
    info: dict[str, Any]  # image sizes and channels, or column summaries; the split recipe
    samples: list[SampleItem]

    @classmethod
    def of_detail(cls, ds: Dataset, samples: list[DatasetItem]) -> DatasetDetail:
        info = {k: v for k, v in ds.info.items() if k not in {"warnings", "csv_blob", "split_blob"}}
        return cls(
            **DatasetPublic.of(ds).model_dump(),
            info=info,
            samples=[
                SampleItem(
                    idx=s.idx,
                    split=s.split,
                    label=ds.classes[s.label],
                    height=s.height,
                    width=s.width,
                    image_url=f"/api/v1/datasets/{ds.id}/items/{s.idx}/image.png",
                )
                for s in samples
            ],
        )


class DatasetList(BaseModel):
    items: list[DatasetPublic]
    total: int


class DatasetImportPublic(BaseModel):
    """A dataset import run as a job (``POST /datasets`` with ``Prefer: respond-async``)."""

    id: str  # the job's id
    url: str
    status: str  # queued | running | succeeded | failed | cancelled
    name: str  # the dataset's name, as asked
    progress: dict[str, Any]  # stage (reading | importing), bytes, total_bytes
    dataset: DatasetPublic | None  # the imported dataset, once succeeded
    error: str | None  # why it failed: the reason the synchronous import gives
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None

    @classmethod
    def of(cls, job: Job, dataset: Dataset | None) -> DatasetImportPublic:
        return cls(
            id=job.id,
            url=f"/api/v1/dataset-imports/{job.id}",
            status=job.status,
            name=str((job.params or {}).get("name", "")),
            progress=dict(job.progress or {}),
            dataset=DatasetPublic.of(dataset) if dataset is not None else None,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            created_by=job.created_by,
        )
