"""Scheduled backups: a `backup` job per schedule slot, run by the job system, then retention.

Time is cut into slots of CLEARSCAN_BACKUP_SCHEDULE_HOURS from the Unix epoch (UTC). Every API
process checks now and then whether the current slot has its job and submits it if not, under
the idempotency key `backup:<slot>`: the key is unique in the jobs table, so however many
processes try, one job per slot is written. The job names its backup after the slot, so an
attempt that follows a killed one finds the finished backup instead of making a second."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.backup import service
from clearscan.backup.target import Location
from clearscan.jobs import service as jobs
from clearscan.jobs.delivery import JobQueue, commit_and_deliver
from clearscan.jobs.models import Job
from clearscan.jobs.service import JobContext
from clearscan.storage import BlobStore

log = logging.getLogger(__name__)

BACKUP_KIND = "backup"
"""The job kind of a backup."""


def slot_of(now: datetime, hours: float) -> datetime:
    """The start of the schedule slot `now` falls in."""
    step = hours * 3600.0
    start = (now.timestamp() // step) * step
    return datetime.fromtimestamp(start, UTC)


def slot_key(slot: datetime) -> str:
    return f"backup:{slot.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def submit_due(
    *,
    sessions: sessionmaker[Session],
    queue: JobQueue | None,
    hours: float,
    now: datetime | None = None,
) -> Job | None:
    """Submit the backup job of the current slot unless it exists; the job, or None."""
    slot = slot_of(now or datetime.now(UTC), hours)
    key = slot_key(slot)
    with sessions() as db:
        if jobs.find_by_key(db=db, idempotency_key=key) is not None:
            return None
        try:
            job = jobs.submit(
                db=db,
                kind=BACKUP_KIND,
                params={"slot": slot.isoformat()},
                actor="system",
                idempotency_key=key,
            )
            commit_and_deliver(db=db, queue=queue, jobs=[job])
        except IntegrityError:  # another process submitted this slot's job first
            db.rollback()
            return None
    log.info("backup of slot %s queued (job %s)", key, job.id)
    return job


def scheduler(
    *,
    sessions: sessionmaker[Session],
    queue: Callable[[], JobQueue | None],
    hours: float,
) -> Callable[[], None]:
    """The check a periodic thread runs: submit the current slot's job when due."""

    def check() -> None:
        submit_due(sessions=sessions, queue=queue(), hours=hours)

    return check


def check_every_s(hours: float) -> float:
    """How often the scheduler looks: often enough to start a slot's backup within a few
    minutes of the slot's start, never more than once a minute."""
    return max(60.0, min(300.0, hours * 3600.0 / 12))


def run_backup_job(
    ctx: JobContext,
    *,
    database_url: str,
    blobs: BlobStore,
    models_root: Path | None,
    data_dir: Path,
    location: Location,
    key: bytes | None,
    keep: int,
    max_age_days: float,
) -> dict[str, Any]:
    """The `backup` job: back up to `location` under the slot's name, then apply retention."""
    slot_text = ctx.params.get("slot")
    slot = datetime.fromisoformat(slot_text) if isinstance(slot_text, str) else None
    name = service.new_name(slot=slot) if slot is not None else None
    if name is not None and name in location.names():
        result: dict[str, Any] = {"backup": name, "location": location.url, "existing": True}
    else:
        if name is not None:
            location.delete(name, partial=True)  # what a killed attempt left
        ctx.report(force=True, stage="backing up")
        made = service.create(
            service.Sources(
                database_url=database_url, blobs=blobs, models_root=models_root, data_dir=data_dir
            ),
            location,
            key=key,
            slot=slot,
            progress=lambda line: ctx.report(stage=line),
        )
        result = {
            "backup": made.name,
            "location": location.url,
            "bytes": made.total_bytes,
            "blobs": len(made.blobs),
            "missing_blobs": len(made.missing_blobs),
            "encrypted": made.encryption is not None,
        }
    result["pruned"] = service.prune(location, keep=keep, max_age_days=max_age_days)
    return result
