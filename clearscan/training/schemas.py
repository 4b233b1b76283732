"""Training-run in/out models."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from clearscan.jobs.models import Job


class TrainingRunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(max_length=64, description="dataset name or id")
    recipe: str | None = Field(default=None, max_length=64, description="default: by dataset")
    epochs: int | None = Field(default=None, ge=1, le=500)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    model_name: str | None = Field(default=None, max_length=64, description="default: dataset")
    window: int | None = Field(default=None, ge=4, le=100_000, description="sensor streams")
    step: int | None = Field(default=None, ge=1, le=100_000, description="sensor streams")
    team: str | None = Field(
        default=None, max_length=64, description="the team it belongs to, for an admin in several"
    )


class EvaluationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=128, description="NAME (its active version) or NAME:VERSION")
    dataset: str = Field(max_length=64, description="dataset name or id")
    split: str = Field(default="test", pattern="^(train|val|test)$")
    team: str | None = Field(
        default=None, max_length=64, description="the team it belongs to, for an admin in several"
    )


class TrainingRunPublic(BaseModel):
    id: str
    status: str  # queued | running | succeeded | failed | cancelled
    params: dict[str, Any]
    progress: dict[str, Any]  # stage, epoch, epochs, loss, val_auc, eta_s, history, ...
    result: dict[str, Any] | None  # model (name:version), val_metrics, recipe, dataset hash
    error: str | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None

    @classmethod
    def of(cls, job: Job) -> TrainingRunPublic:
        return cls(
            id=job.id,
            status=job.status,
            params=dict(job.params),
            progress=dict(job.progress or {}),
            result=job.result,
            error=job.error,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            created_by=job.created_by,
        )


class TrainingRunList(BaseModel):
    items: list[TrainingRunPublic]
    total: int
