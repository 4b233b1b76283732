"""Background jobs (training runs, evaluations, batches): a row per job is the source of truth,
so a job survives restarts; the in-process worker or Celery workers only deliver and run it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from clearscan.db.base import Base, UTCDateTime, utcnow
from clearscan.teams import models as _teams  # noqa: F401  (the table team_id references)

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # a run that ends its worker (killed, out of memory) counts; after this many the job fails
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    # the Celery queue that delivers it (workers subscribe with `clearscan worker --queues`)
    queue: Mapped[str] = mapped_column(String(32), default="default", server_default="default")
    # the same key submitted twice names one job (a client retrying after a lost reply)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True, unique=True)
    worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # when a queue last carried it to the workers (a sweep delivers again what a broker lost)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # batches, training runs, evaluations: the team they belong to (None: admins only)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True, index=True)
