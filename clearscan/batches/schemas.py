"""Batch in/out models: the JSON body of a batch of stored images, and the batch as the API
shows it (its progress counted from its items, and on its own page every item's result)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clearscan.batches.archive import MAX_ITEMS
from clearscan.batches.models import BatchItem
from clearscan.jobs.models import Job

API = "/api/v1"


class BatchImagesCreate(BaseModel):
    """A batch of images already stored in cases (``Content-Type: application/json``)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(
        min_length=1, max_length=MAX_ITEMS, description="ids of stored case images, in order"
    )
    model: str | None = Field(
        default=None,
        max_length=128,
        description="NAME (its serving version, as predict) or NAME:VERSION; default: the "
        "configured default model",
    )
    explain: bool = Field(default=True, description="compute a Grad-CAM heatmap per image")
    team: str | None = Field(
        default=None,
        max_length=64,
        description="the team the batch and its cases belong to, for a user in several",
    )


class BatchProgress(BaseModel):
    total: int
    done: int  # succeeded + failed
    succeeded: int
    failed: int
    queued: int  # not analysed (yet; for a finished batch: never)


class BatchItemPublic(BaseModel):
    index: int  # 0-based, the order of analysis
    name: str | None  # the file's name in the archive: shown only, never a path
    source_image_id: str | None
    status: str  # queued | succeeded | failed
    case_id: str | None
    case_url: str | None
    top_label: str | None
    model: str | None  # NAME:VERSION that analysed it
    error: str | None
    finished_at: datetime | None

    @classmethod
    def of(cls, item: BatchItem, prediction: tuple[str, str] | None) -> BatchItemPublic:
        top, model = prediction or (None, None)
        return cls(
            index=item.idx,
            name=item.name,
            source_image_id=item.source_image_id,
            status=item.status,
            case_id=item.case_id,
            case_url=f"{API}/cases/{item.case_id}" if item.case_id else None,
            top_label=top,
            model=model,
            error=item.error,
            finished_at=item.finished_at,
        )


class BatchPublic(BaseModel):
    id: str
    url: str
    status: str  # queued | running | succeeded | failed | cancelled
    model: str  # as asked: NAME or NAME:VERSION
    explain: bool
    source: str  # archive | images
    progress: BatchProgress
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None

    @classmethod
    def fields_of(cls, job: Job, progress: BatchProgress) -> dict[str, Any]:
        params = dict(job.params or {})
        return {
            "id": job.id,
            "url": f"{API}/batches/{job.id}",
            "status": job.status,
            "model": str(params.get("model", "")),
            "explain": bool(params.get("explain", True)),
            "source": str(params.get("source", "")),
            "progress": progress,
            "error": error_of(job, progress),
            "cancel_requested": job.cancel_requested,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "created_by": job.created_by,
        }

    @classmethod
    def of(cls, job: Job, progress: BatchProgress) -> BatchPublic:
        return cls(**cls.fields_of(job, progress))


class BatchDetail(BatchPublic):
    items: list[BatchItemPublic]


class BatchList(BaseModel):
    items: list[BatchPublic]
    total: int


def error_of(job: Job, progress: BatchProgress) -> str | None:
    """Why the batch ended as it did, in words that fit a batch: the cases made before a cancel
    or a failure are kept, and how many."""
    n = progress.succeeded
    kept = f"the {n} case{'s' if n != 1 else ''} made before {'are' if n != 1 else 'is'} kept"
    if job.status == "cancelled":
        if progress.done == 0:
            return "cancelled before any image was analysed"
        return f"cancelled after {progress.done} of {progress.total} images; {kept}"
    if job.status == "failed":
        reason = job.error or "failed"
        return f"{reason}; {kept}" if n else reason
    return job.error
