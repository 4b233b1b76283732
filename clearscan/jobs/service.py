"""Submit, run, watch and cancel jobs: the jobs table is the system of record.

A job is claimed by one runner with a conditional UPDATE (queued -> running, attempts + 1), so two
workers never run the same job, however often a queue delivers it. A running job holds a lease
that its heartbeat renews; a sweep (`sweep()`, run by every worker) puts a job whose lease expired
back in the queue, or ends it `failed` once it has used its attempts (a job that keeps killing
its worker never loops). Every write of a runner is fenced by its attempt number, so a runner that
lost its lease can no longer touch the row. Handlers publish their result (a model version, a
case) in one atomic step, so a run cut short registers nothing half-way."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.errors import ClearScanError, Conflict, Invalid, NotFound, Unprocessable
from clearscan.jobs.models import Job
from clearscan.observability.metrics import JobQueueRow, Metrics
from clearscan.teams import service as teams
from clearscan.teams.service import Scope

log = logging.getLogger(__name__)
LEASE_S = 60.0  # a running job whose heartbeat is older than this lost its runner
HEARTBEAT_S = 5.0  # how often a runner renews its lease (well inside LEASE_S)
REDELIVER_AFTER_S = 300.0  # a queued job no worker took for this long is delivered again
DEFAULT_MAX_ATTEMPTS = 3
PROGRESS_EVERY_S = 1.0


class JobError(Invalid):
    """A job cannot be submitted or run as asked (400 unless a subclass says otherwise)."""


class JobNotFound(NotFound, JobError):
    """No job of this id (and kind)."""


class JobConflict(Conflict, JobError):
    """The job is in the wrong state for this action (e.g. cancelling a finished job)."""


class JobCancelled(Exception):
    """Raised inside a handler when the job's cancellation was requested."""


class JobLeaseLost(JobCancelled):
    """Raised inside a handler whose lease a sweep gave to another attempt: stop, write nothing."""


class JobContext:
    """What a handler sees: its parameters, a progress reporter and the cancellation flag."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        params: dict[str, Any],
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        attempt: int | None = None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.params = params
        self.on_progress = on_progress
        self.attempt = attempt  # the fencing token: writes apply only while it holds the lease
        self._last = 0.0
        self._cancelled = False
        self.lease_lost = False
        self.completed = False
        # what a run stopped part-way leaves behind, added to its error (set by the handler)
        self.stop_note: str | None = None

    def report(self, force: bool = False, **progress: Any) -> None:
        """Merge `progress` into the job row (at most once a second unless forced); raise
        JobCancelled when a cancel was requested."""
        if self.on_progress is not None:
            self.on_progress(progress)
        now = time.monotonic()
        if not force and now - self._last < PROGRESS_EVERY_S:
            if self._cancelled:
                raise JobCancelled()
            return
        self._last = now
        with self.sessions() as db:
            job = db.get(Job, self.job_id)
            if job is None:
                raise JobCancelled()
            if self.attempt is not None and (
                job.status != "running" or job.attempts != self.attempt
            ):
                self.lease_lost = True
            else:
                job.progress = {**(job.progress or {}), **progress}
                job.heartbeat_at = datetime.now(UTC)
                self._cancelled = job.cancel_requested
                db.commit()
        if self.lease_lost:
            raise JobLeaseLost()
        if self._cancelled:
            raise JobCancelled()

    def stage_result(self, result: dict[str, Any]) -> None:
        """Record, before a last step that cannot share the database's transaction (files
        renamed into a store), the result that step will produce: an attempt that follows a
        killed one finds it with `staged_result()` and checks whether the step happened."""
        with self.sessions() as db:
            res = db.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status == "running", Job.attempts == self.attempt)
                .values(result=result)
            )
            db.commit()
        if not _changed(res):
            self.lease_lost = True
            raise JobLeaseLost()

    def staged_result(self) -> dict[str, Any] | None:
        """The result an earlier attempt staged, if any."""
        with self.sessions() as db:
            return db.scalar(select(Job.result).where(Job.id == self.job_id))

    def complete(self, db: Session, result: dict[str, Any]) -> None:
        """Mark the job succeeded in the caller's transaction, so that the handler's own writes
        and the job's end commit together: a run killed before that commit left nothing, one
        killed after it is over. JobLeaseLost when another attempt owns the job (the caller's
        transaction must then be rolled back)."""
        res = db.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.status == "running", Job.attempts == self.attempt)
            .values(status="succeeded", result=result, error=None, finished_at=datetime.now(UTC))
        )
        if not _changed(res):
            self.lease_lost = True
            raise JobLeaseLost()
        self.completed = True

    def cancelled(self) -> bool:
        if self.lease_lost:
            return True
        if not self._cancelled:
            with self.sessions() as db:
                self._cancelled = bool(
                    db.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                )
        return self._cancelled


Handler = Callable[[JobContext], dict[str, Any]]


def submit(
    *,
    db: Session,
    kind: str,
    params: dict[str, Any],
    actor: str | None,
    queue: str = "default",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    idempotency_key: str | None = None,
) -> Job:
    """Queue a job (the caller audits, commits and delivers it: `delivery.commit_and_deliver`).
    `max_attempts`: runs that may end their worker before the job fails (1: never run again)."""
    job = Job(
        id=uuid.uuid4().hex,
        kind=kind,
        status="queued",
        params=params,
        created_by=actor,
        queue=queue,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        attempts=0,
    )
    job.progress = {}
    db.add(job)
    db.flush()
    return job


def find_by_key(*, db: Session, idempotency_key: str) -> Job | None:
    """The job submitted earlier under this idempotency key, if any."""
    return db.scalar(select(Job).where(Job.idempotency_key == idempotency_key))


class KeyInvalid(JobError, Unprocessable):
    """An Idempotency-Key header that cannot be one (422)."""

    status_code = 422


class KeyConflict(JobConflict):
    """The Idempotency-Key was used for another request (409)."""


def check_key(key: str | None) -> None:
    """KeyInvalid unless `key` is None or 1 to 128 printable characters."""
    if key is not None and not (1 <= len(key) <= 128 and key.isprintable()):
        raise KeyInvalid("Idempotency-Key: 1 to 128 printable characters")


def earlier_submission(*, db: Session, key: str, kind: str, user_id: int) -> Job | None:
    """The job an earlier request of this user made under `key` (a client retrying after a lost
    reply gets the same job); KeyConflict when the key names another kind or user's job. The
    submitting user is `params["user_id"]`."""
    job = find_by_key(db=db, idempotency_key=key)
    if job is None:
        return None
    if job.kind != kind or (job.params or {}).get("user_id") != user_id:
        raise KeyConflict("this Idempotency-Key was used for another request")
    return job


def submit_audited(
    *,
    db: Session,
    ctx: audit.RequestContext,
    kind: str,
    action: Action,
    params: dict[str, Any],
    details: dict[str, Any],
    queue: str = "default",
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    idempotency_key: str | None = None,
) -> Job:
    """Queue a job and its audit event in the caller's transaction (the caller commits)."""
    job = submit(
        db=db,
        kind=kind,
        params=params,
        actor=ctx.actor,
        queue=queue,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
    )
    audit.append(
        audit.Entry(action, object_type="job", object_id=job.id, details=details), db=db, ctx=ctx
    )
    return job


def get(*, db: Session, job_id: str, kind: str | None = None) -> Job:
    job = db.get(Job, job_id)
    if job is None or (kind is not None and job.kind != kind):
        raise JobNotFound(f"job {job_id!r} not found")
    return job


def get_owned(
    *, db: Session, job_id: str, kind: str, scope: Scope | None, missing: ClearScanError
) -> Job:
    """The `kind` job `job_id`; `missing` (the caller's "not found") for an unknown id, another
    kind, or a job of a team `scope` may not see (same reply: ids of other teams do not leak)."""
    job = db.get(Job, job_id) if len(job_id) <= 32 else None
    if job is None or job.kind != kind:
        raise missing
    teams.check(
        db=db,
        scope=scope,
        team_id=job.team_id,
        object_type="job",
        object_id=job.id,
        missing=missing,
    )
    return job


def cancel(*, db: Session, job_id: str, kind: str | None = None) -> Job:
    """Cancel a queued job at once; ask a running one to stop at its next progress report."""
    job = get(db=db, job_id=job_id, kind=kind)
    # conditional updates: a claim landing at the same moment is never overwritten
    res = db.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="cancelled", finished_at=datetime.now(UTC), error="cancelled before it started"
        )
    )
    if getattr(res, "rowcount", 0) != 1:
        res = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(cancel_requested=True)
        )
    db.flush()
    db.refresh(job)
    if getattr(res, "rowcount", 0) != 1:
        raise JobConflict(f"job {job_id} already {job.status}")
    return job


@dataclass
class Sweep:
    """What one sweep did: jobs put back in the queue, jobs failed for good, and the ids (with
    their queues) that need delivering again."""

    requeued: int = 0
    failed: int = 0
    redeliver: list[tuple[str, str]] = field(default_factory=list)


def sweep(
    *,
    sessions: sessionmaker[Session],
    lease_s: float = LEASE_S,
    redeliver_after_s: float | None = REDELIVER_AFTER_S,
    metrics: Metrics | None = None,
) -> Sweep:
    """Recover jobs whose runner is gone. A running job whose lease expired goes back to the
    queue, or ends `failed` with the reason once it used `max_attempts` runs; with
    `redeliver_after_s`, queued jobs no worker took for that long (a broker lost the message, or
    one was never sent) are listed for delivery again. Every change is a conditional UPDATE, so
    sweeps of many workers at once change each job once."""
    now = datetime.now(UTC)
    out = Sweep()
    finished: list[Job] = []
    with sessions() as db:
        expired = db.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.queue).where(
                Job.status == "running", Job.heartbeat_at < now - timedelta(seconds=lease_s)
            )
        ).all()
        for job_id, attempts, max_attempts, queue in expired:
            fence = (Job.id == job_id, Job.status == "running", Job.attempts == attempts)
            if attempts >= max_attempts:
                res = db.execute(
                    update(Job)
                    .where(*fence)
                    .values(
                        status="failed",
                        finished_at=now,
                        error=(
                            f"interrupted {attempts} time(s): the process running it stopped "
                            "(killed, out of memory or restarted) and no attempts are left. "
                            "Submit it again."
                        ),
                    )
                )
                if _changed(res):
                    out.failed += 1
                    log.warning("job %s failed: its runner died %d time(s)", job_id, attempts)
                    job = db.get(Job, job_id)
                    if job is not None:
                        finished.append(job)
            else:
                res = db.execute(
                    update(Job)
                    .where(*fence)
                    .values(status="queued", worker=None, heartbeat_at=None, delivered_at=now)
                )
                if _changed(res):
                    out.requeued += 1
                    out.redeliver.append((job_id, queue))
                    log.warning(
                        "job %s: runner gone after attempt %d of %d; queued again",
                        job_id,
                        attempts,
                        max_attempts,
                    )
        if redeliver_after_s is not None:
            cutoff = now - timedelta(seconds=redeliver_after_s)
            lost = db.execute(
                select(Job.id, Job.queue).where(
                    Job.status == "queued",
                    or_(Job.delivered_at.is_(None), Job.delivered_at < cutoff),
                    Job.created_at < cutoff,
                )
            ).all()
            for job_id, queue in lost:
                res = db.execute(
                    update(Job)
                    .where(
                        Job.id == job_id,
                        Job.status == "queued",
                        or_(Job.delivered_at.is_(None), Job.delivered_at < cutoff),
                    )
                    .values(delivered_at=now)
                )
                if _changed(res):
                    out.redeliver.append((job_id, queue))
        db.commit()
        if metrics is not None:
            for job in finished:
                metrics.job_finished(job.kind, "failed", _run_seconds(job))
    return out


def mark_delivered(*, sessions: sessionmaker[Session], job_ids: list[str]) -> None:
    """Record that a queue carried these jobs now (the sweep's clock for lost messages)."""
    if not job_ids:
        return
    with sessions() as db:
        db.execute(update(Job).where(Job.id.in_(job_ids)).values(delivered_at=datetime.now(UTC)))
        db.commit()


def _changed(res: Any) -> bool:
    return bool(getattr(res, "rowcount", 0) == 1)


def claim(*, sessions: sessionmaker[Session], job_id: str, worker: str) -> bool:
    """queued -> running for exactly one claimant (one more attempt used)."""
    now = datetime.now(UTC)
    with sessions() as db:
        res = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(
                status="running",
                started_at=now,
                heartbeat_at=now,
                worker=worker,
                attempts=Job.attempts + 1,
            )
        )
        db.commit()
        return _changed(res)


def run_claimed(
    *,
    sessions: sessionmaker[Session],
    job_id: str,
    handlers: dict[str, Handler],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    metrics: Metrics | None = None,
    heartbeat_s: float | None = None,
) -> Job:
    """Run a job this runner claimed, renewing its lease, and record how it ended (and count it
    in `metrics` when given). When a sweep gave the job to another attempt meanwhile (this
    runner stalled past its lease), the run stops and writes nothing."""
    with sessions() as db:
        job = get(db=db, job_id=job_id)
        kind, params, attempt = job.kind, dict(job.params), job.attempts
    ctx = JobContext(sessions, job_id, params, on_progress, attempt=attempt)
    stop = threading.Event()
    every = HEARTBEAT_S if heartbeat_s is None else heartbeat_s

    def beat() -> None:
        while not stop.wait(every):
            try:
                with sessions() as db:
                    res = db.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
                        .values(heartbeat_at=datetime.now(UTC))
                    )
                    db.commit()
                if not _changed(res):
                    ctx.lease_lost = not ctx.completed  # completed: the row simply ended
                    return
            except SQLAlchemyError:
                log.warning("job %s: heartbeat failed", job_id)

    heart = threading.Thread(target=beat, name=f"job-heartbeat-{job_id[:8]}", daemon=True)
    heart.start()
    status, result, error = "failed", None, None
    try:
        handler = handlers.get(kind)
        if handler is None:
            raise JobError(f"no handler for job kind {kind!r}")
        result = handler(ctx)
        status = "succeeded"
    except JobLeaseLost:
        status, error = "lost", None
    except JobCancelled:
        note = f"; {ctx.stop_note}" if ctx.stop_note else ""
        status, error = "cancelled", f"cancelled while running{note}"
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, kind)
        detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        error = str(detail)[:2000]
    finally:
        stop.set()
        heart.join()
    if ctx.completed or status == "lost":  # recorded in the handler's transaction, or not ours
        with sessions() as db:
            job = get(db=db, job_id=job_id)
            db.expunge(job)
        mine = ctx.completed
        if mine and metrics is not None:
            metrics.job_finished(kind, job.status, _run_seconds(job))
        if not mine:
            log.warning("job %s: attempt %d lost its lease; outcome discarded", job_id, attempt)
        return job
    try:
        job, mine = _finish(sessions, job_id, attempt, status, result, error)
    except SQLAlchemyError as exc:  # e.g. a result the database refuses: never leave it running
        log.exception("job %s: cannot store its result", job_id)
        job, mine = _finish(
            sessions,
            job_id,
            attempt,
            "failed",
            None,
            f"the result could not be stored: {type(exc).__name__}",
        )
    if not mine:
        log.warning("job %s: attempt %d lost its lease; its outcome was discarded", job_id, attempt)
        return job
    log.info("job %s (%s) %s", job_id, kind, job.status)
    if metrics is not None:
        metrics.job_finished(kind, job.status, _run_seconds(job))
    return job


def _aware(t: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive (they are stored in UTC)
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _run_seconds(job: Job) -> float | None:
    start, end = _aware(job.started_at), _aware(job.finished_at)
    return (end - start).total_seconds() if start is not None and end is not None else None


def queue_snapshot(*, sessions: sessionmaker[Session]) -> list[JobQueueRow]:
    """Unfinished jobs by kind and status, with the age of the oldest, for the metrics."""
    now = datetime.now(UTC)
    with sessions() as db:
        rows = db.execute(
            select(Job.kind, Job.status, func.count(), func.min(Job.created_at))
            .where(Job.status.in_(("queued", "running")))
            .group_by(Job.kind, Job.status)
        ).all()
    out = []
    for kind, status, count, oldest in rows:
        t = _aware(oldest)
        age = max((now - t).total_seconds(), 0.0) if t is not None else 0.0
        out.append(JobQueueRow(kind=kind, status=status, count=int(count), oldest_age_s=age))
    return out


def _finish(
    sessions: sessionmaker[Session],
    job_id: str,
    attempt: int,
    status: str,
    result: dict[str, Any] | None,
    error: str | None,
) -> tuple[Job, bool]:
    """Record the outcome of `attempt`; (the row, whether this attempt still held the job)."""
    with sessions() as db:
        res = db.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.attempts == attempt)
            .values(status=status, result=result, error=error, finished_at=datetime.now(UTC))
        )
        db.commit()
        job = get(db=db, job_id=job_id)
        db.refresh(job)
        db.expunge(job)
        return job, _changed(res)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]
