"""Submit, run, watch and cancel jobs.

A job is claimed by one runner with a conditional UPDATE (queued -> running), so two workers
(the server's and a CLI's) never run the same job. A running job heartbeats every few seconds;
a job whose runner died (killed process, restart) is found by its stale heartbeat and ends
`failed` with that reason: its work is never half-registered because handlers publish their
result (a model version) in one atomic step at the very end."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.errors import Conflict, Invalid, NotFound
from clearscan.jobs.models import Job
from clearscan.observability.metrics import JobQueueRow, Metrics

log = logging.getLogger(__name__)
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
PROGRESS_EVERY_S = 1.0


class JobError(Invalid):
    """A job cannot be submitted or run as asked (400 unless a subclass says otherwise)."""


class JobNotFound(NotFound, JobError):
    """No job of this id (and kind)."""


class JobConflict(Conflict, JobError):
    """The job is in the wrong state for this action (e.g. cancelling a finished job)."""


class JobCancelled(Exception):
    """Raised inside a handler when the job's cancellation was requested."""


class JobContext:
    """What a handler sees: its parameters, a progress reporter and the cancellation flag."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: str,
        params: dict[str, Any],
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.job_id = job_id
        self.params = params
        self.on_progress = on_progress
        self._last = 0.0
        self._cancelled = False

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
            job.progress = {**(job.progress or {}), **progress}
            job.heartbeat_at = datetime.now(UTC)
            self._cancelled = job.cancel_requested
            db.commit()
        if self._cancelled:
            raise JobCancelled()

    def cancelled(self) -> bool:
        if not self._cancelled:
            with self.sessions() as db:
                self._cancelled = bool(
                    db.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
                )
        return self._cancelled


Handler = Callable[[JobContext], dict[str, Any]]


def submit(*, db: Session, kind: str, params: dict[str, Any], actor: str | None) -> Job:
    """Queue a job (the caller audits and commits)."""
    job = Job(id=uuid.uuid4().hex, kind=kind, status="queued", params=params, created_by=actor)
    job.progress = {}
    db.add(job)
    db.flush()
    return job


def submit_audited(
    *,
    db: Session,
    ctx: audit.RequestContext,
    kind: str,
    action: Action,
    params: dict[str, Any],
    details: dict[str, Any],
) -> Job:
    """Queue a job and its audit event in the caller's transaction (the caller commits)."""
    job = submit(db=db, kind=kind, params=params, actor=ctx.actor)
    audit.append(
        audit.Entry(action, object_type="job", object_id=job.id, details=details), db=db, ctx=ctx
    )
    return job


def get(*, db: Session, job_id: str, kind: str | None = None) -> Job:
    job = db.get(Job, job_id)
    if job is None or (kind is not None and job.kind != kind):
        raise JobNotFound(f"job {job_id!r} not found")
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


def fail_stale(*, sessions: sessionmaker[Session], metrics: Metrics | None = None) -> int:
    """Mark running jobs whose runner stopped heartbeating as failed. Returns how many."""
    cutoff = datetime.now(UTC) - timedelta(seconds=STALE_AFTER_S)
    with sessions() as db:
        stale = db.scalars(
            select(Job).where(Job.status == "running", Job.heartbeat_at < cutoff)
        ).all()
        for job in stale:
            job.status, job.finished_at = "failed", datetime.now(UTC)
            job.error = (
                "interrupted: the process running it stopped (killed or restarted); "
                "nothing was registered. Submit it again."
            )
            log.warning("job %s (%s) interrupted: runner gone", job.id, job.kind)
        db.commit()
        if metrics is not None:
            for job in stale:
                metrics.job_finished(job.kind, "failed", _run_seconds(job))
        return len(stale)


def claim(*, sessions: sessionmaker[Session], job_id: str, worker: str) -> bool:
    """queued -> running for exactly one claimant."""
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
        return bool(getattr(res, "rowcount", 0) == 1)


def run_claimed(
    *,
    sessions: sessionmaker[Session],
    job_id: str,
    handlers: dict[str, Handler],
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    metrics: Metrics | None = None,
) -> Job:
    """Run a job this runner claimed, with a heartbeat, and record how it ended (and count it
    in `metrics` when given)."""
    with sessions() as db:
        job = get(db=db, job_id=job_id)
        kind, params = job.kind, dict(job.params)
    ctx = JobContext(sessions, job_id, params, on_progress)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                with sessions() as db:
                    db.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == "running")
                        .values(heartbeat_at=datetime.now(UTC))
                    )
                    db.commit()
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
    except JobCancelled:
        status, error = "cancelled", "cancelled while running; nothing was registered"
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, kind)
        detail = getattr(exc, "detail", None) or f"{type(exc).__name__}: {exc}"
        error = str(detail)[:2000]
    finally:
        stop.set()
        heart.join()
    try:
        job = _finish(sessions, job_id, status, result, error)
    except SQLAlchemyError as exc:  # e.g. a result the database refuses: never leave it running
        log.exception("job %s: cannot store its result", job_id)
        job = _finish(
            sessions,
            job_id,
            "failed",
            None,
            f"the result could not be stored: {type(exc).__name__}",
        )
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
    status: str,
    result: dict[str, Any] | None,
    error: str | None,
) -> Job:
    with sessions() as db:
        job = get(db=db, job_id=job_id)
        job.status, job.result, job.error = status, result, error
        job.finished_at = datetime.now(UTC)
        db.commit()
        db.refresh(job)
        db.expunge(job)
        return job


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


class InProcessWorker:
    """Runs queued jobs one at a time on a background thread of this process (the embedded
    default). Wakes on `notify()` and polls every `poll_s` for jobs other processes queued."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        handlers: dict[str, Handler],
        poll_s: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.sessions = sessions
        self.handlers = handlers
        self.poll_s = poll_s
        self.metrics = metrics
        self.name = worker_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="clearscan-jobs", daemon=True)
            self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next(self) -> str | None:
        with self.sessions() as db:
            return db.scalar(
                select(Job.id)
                .where(Job.status == "queued", Job.kind.in_(list(self.handlers)))
                .order_by(Job.created_at)
                .limit(1)
            )

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                fail_stale(sessions=self.sessions, metrics=self.metrics)
                job_id = self._next()
                if job_id is not None and claim(
                    sessions=self.sessions, job_id=job_id, worker=self.name
                ):
                    run_claimed(
                        sessions=self.sessions,
                        job_id=job_id,
                        handlers=self.handlers,
                        metrics=self.metrics,
                    )
                    continue
            except SQLAlchemyError as exc:
                log.error("job worker: database error: %s", type(exc).__name__)
            self._wake.wait(self.poll_s)
            self._wake.clear()
