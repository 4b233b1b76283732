"""How queued jobs reach a runner. The jobs table decides; a queue only delivers.

Two queues with one contract (`JobQueue`): `InProcessWorker`, a thread of the serving process
(the embedded default), and `CeleryQueue` (clearscan.jobs.celery_queue), which hands job ids to
Celery workers through Redis or RabbitMQ when CLEARSCAN_BROKER_URL is set. Submitting code calls
`commit_and_deliver`: the queue is checked before the commit (a broker that is down refuses the
submission with 503 and nothing is written), the job rows are committed, then delivered."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.errors import Unavailable
from clearscan.jobs import service
from clearscan.jobs.models import Job
from clearscan.jobs.service import Handler
from clearscan.observability.metrics import Metrics

log = logging.getLogger(__name__)


class QueueUnavailable(Unavailable):
    """The job queue (the broker) cannot take jobs now (503)."""


class JobQueue(Protocol):
    """Delivery of committed jobs to whoever runs them."""

    name: str
    runs_here: bool  # whether this process runs the jobs it queues (the embedded worker)

    def route(self, kind: str) -> str:
        """The queue name that carries jobs of this kind."""
        ...

    def check(self) -> None:
        """Raise QueueUnavailable when a job submitted now could not be delivered."""

    def deliver(self, jobs: Sequence[tuple[str, str]]) -> None:
        """Hand over committed (job id, queue name) pairs; never raises for a delivery failure
        (the sweep delivers again what was not carried)."""

    def start(self) -> None:
        """Start what runs in this process (the in-process worker's thread)."""

    def stop(self, timeout: float | None = 5.0) -> None: ...


def commit_and_deliver(*, db: Session, queue: JobQueue | None, jobs: Sequence[Job]) -> None:
    """Commit the caller's transaction, which holds these new jobs, and deliver them. The queue
    is asked first, so a broker that is down refuses the submission before anything is written
    (the caller's session is rolled back)."""
    if queue is not None:
        try:
            queue.check()
        except QueueUnavailable:
            db.rollback()
            raise
        for job in jobs:
            job.queue = queue.route(job.kind)
    pairs = [(job.id, job.queue) for job in jobs]
    db.commit()
    if queue is not None:
        queue.deliver(pairs)


class InProcessWorker:
    """Runs queued jobs one at a time on a background thread of this process (the embedded
    default). Wakes on delivery and polls every `poll_s` for jobs other processes queued; every
    loop first sweeps: a job whose runner died (this process killed mid-run, then restarted) is
    queued again, or fails once it used its attempts."""

    name = "in-process"
    runs_here = True

    def __init__(
        self,
        sessions: sessionmaker[Session],
        handlers: dict[str, Handler],
        poll_s: float = 2.0,
        metrics: Metrics | None = None,
        lease_s: float = service.LEASE_S,
    ) -> None:
        self.sessions = sessions
        self.handlers = handlers
        self.poll_s = poll_s
        self.metrics = metrics
        self.lease_s = lease_s
        self.name_of_runner = service.worker_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def route(self, kind: str) -> str:
        return "default"  # one thread runs every kind

    def check(self) -> None:
        """Always able to take jobs: they wait in the table for this thread."""

    def deliver(self, jobs: Sequence[tuple[str, str]]) -> None:
        self.notify()

    def start(self) -> None:
        """Start the thread (again, after stop(): it picks up what was queued meanwhile)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
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
                service.sweep(
                    sessions=self.sessions,
                    lease_s=self.lease_s,
                    redeliver_after_s=None,
                    metrics=self.metrics,
                )
                job_id = self._next()
                if job_id is not None and service.claim(
                    sessions=self.sessions, job_id=job_id, worker=self.name_of_runner
                ):
                    service.run_claimed(
                        sessions=self.sessions,
                        job_id=job_id,
                        handlers=self.handlers,
                        metrics=self.metrics,
                        heartbeat_s=min(service.HEARTBEAT_S, self.lease_s / 6),
                    )
                    continue
            except SQLAlchemyError as exc:
                log.error("job worker: database error: %s", type(exc).__name__)
            self._wake.wait(self.poll_s)
            self._wake.clear()
