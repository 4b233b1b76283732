"""`clearscan worker`: a Celery worker that runs jobs, and the sweep that recovers lost ones.

Each pool process builds its own ClearScan state (database engine, blob store, models) once,
after the fork, and runs the job ids it receives: claim (exactly one runner), run with a renewed
lease, record the outcome. The main process sweeps the table every quarter lease: jobs whose
runner died are queued and delivered again (or fail once they used their attempts), and queued
jobs a broker lost are delivered again."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from clearscan.config import ConfigError, Settings
from clearscan.jobs import service
from clearscan.jobs.celery_queue import TASK, CeleryQueue, make_celery, queue_of
from clearscan.jobs.service import Handler
from clearscan.observability.metrics import Metrics

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger(__name__)


@dataclass
class WorkerState:
    """What a pool process needs to run jobs (built by clearscan.bootstrap.build_worker_state)."""

    sessions: sessionmaker[Session]
    handlers: dict[str, Handler]
    metrics: Metrics | None = None


StateFactory = Callable[[Settings], WorkerState]


class Sweeper:
    """Sweeps the jobs table every `every_s` on a thread and delivers what it recovered."""

    def __init__(
        self,
        settings: Settings,
        queue: CeleryQueue,
        every_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.every_s = every_s
        self.metrics = metrics  # jobs failed for good by a sweep are counted here
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="clearscan-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sweep_once(self) -> service.Sweep:
        done = service.sweep(
            sessions=self.queue.sessions,
            lease_s=self.settings.job_lease_seconds,
            redeliver_after_s=self.settings.job_redeliver_seconds,
            metrics=self.metrics,
        )
        if done.redeliver:
            self.queue.deliver(done.redeliver)
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep_once()
            except SQLAlchemyError as exc:
                log.error("job sweep: database error: %s", type(exc).__name__)


class Runtime:
    """What one pool process holds: its state and handlers, built on the first job."""

    def __init__(self, settings: Settings, build: StateFactory) -> None:
        self.settings = settings
        self.build = build
        self._state: WorkerState | None = None
        self._lock = threading.Lock()

    def state(self) -> WorkerState:
        with self._lock:
            if self._state is None:
                self._state = self.build(self.settings)
            return self._state

    def run(self, job_id: str) -> str:
        """Run one delivered job id; the job's status, or why the delivery was ignored."""
        state = self.state()
        sessions = state.sessions
        if not service.claim(sessions=sessions, job_id=job_id, worker=service.worker_name()):
            with sessions() as db:
                job = db.get(service.Job, job_id)
                status = job.status if job is not None else "missing"
            log.info("job %s delivered again while %s: nothing to do", job_id, status)
            return f"ignored ({status})"
        lease = self.settings.job_lease_seconds
        job = service.run_claimed(
            sessions=sessions,
            job_id=job_id,
            handlers=state.handlers,
            metrics=state.metrics,
            heartbeat_s=min(service.HEARTBEAT_S, lease / 6),
        )
        return job.status


def build_worker_app(settings: Settings, build: StateFactory) -> tuple[Celery, Runtime]:
    """The Celery app of a worker with the job task registered."""
    app = make_celery(settings)
    runtime = Runtime(settings, build)

    @app.task(name=TASK, ignore_result=True)
    def run_job(job_id: str) -> str:
        return runtime.run(job_id)

    return app, runtime


def run(
    settings: Settings,
    *,
    queues: list[str],
    concurrency: int,
    build: StateFactory,
    loglevel: str = "INFO",
    metrics_port: int = 0,
    metrics_host: str = "0.0.0.0",  # noqa: S104 (a scrape target: every interface by default)
) -> None:
    """Run a worker until it is stopped (SIGTERM: finish the running jobs, then exit). With
    `metrics_port`, the pool processes' job metrics (multiprocess files) are served there."""
    from celery.signals import worker_process_init

    from clearscan.db import create_db_engine, make_session_factory
    from clearscan.observability.metrics import files_registry, multiprocess_dir

    if metrics_port:
        from prometheus_client import start_http_server

        path = multiprocess_dir()
        if path is None:
            raise RuntimeError("a worker's metrics need PROMETHEUS_MULTIPROC_DIR set at start")
        try:
            start_http_server(metrics_port, addr=metrics_host, registry=files_registry(path))
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {metrics_port} ({exc.strerror or exc}): another "
                "worker on this host may use it; give each its own --metrics-port, or 0 for none"
            ) from None

    app, runtime = build_worker_app(settings, build)
    publisher = CeleryQueue(
        settings, make_session_factory(create_db_engine(settings.sqlalchemy_url))
    )
    app.conf.task_queues = [queue_of(q, publisher.kind) for q in queues]

    @worker_process_init.connect(weak=False)
    def _ready(**_: Any) -> None:
        runtime.state()  # load models before the first job, not during it

    sweeper = Sweeper(
        settings,
        publisher,
        every_s=max(settings.job_lease_seconds / 4, 0.5),
        metrics=Metrics() if metrics_port else None,
    )
    first = sweeper.sweep_once()  # jobs left behind before this worker started
    if first.requeued or first.failed or first.redeliver:
        log.info(
            "start-up sweep: %d queued again, %d failed, %d delivered",
            first.requeued,
            first.failed,
            len(first.redeliver),
        )
    sweeper.start()
    try:
        app.worker_main(
            [
                "worker",
                f"--concurrency={concurrency}",
                f"--queues={','.join(queues)}",
                "--pool=prefork",
                f"--hostname=clearscan-{os.getpid()}@{socket.gethostname()}",
                "--without-gossip",
                "--without-mingle",
                f"--loglevel={loglevel}",
            ]
        )
    finally:
        sweeper.stop()
