"""Celery delivery of jobs (CLEARSCAN_BROKER_URL; the `queue` extra).

The message carries only the job id: the jobs table holds everything else and decides who runs
it (a conditional claim), so a message delivered twice runs the job once. Settings chosen for
losing nothing: `task_acks_late` (a message is acknowledged when the job ended, not when it was
received), `task_reject_on_worker_lost` (a pool process killed mid-job puts its message back),
prefetch 1 (a worker holds no more than it runs), and with Redis a visibility timeout above the
longest job. With RabbitMQ the queues are quorum queues (replicated, durable). What a broker
still loses (a Redis restart without persistence, a whole worker killed with messages reserved)
the sweep delivers again from the table."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from clearscan.config import ConfigError, Settings
from clearscan.jobs import service
from clearscan.jobs.delivery import QueueUnavailable

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Queue

log = logging.getLogger(__name__)

TASK = "clearscan.run_job"
SCHEMES = {"redis": "redis", "rediss": "redis", "amqp": "amqp", "amqps": "amqp"}
CONNECT_TIMEOUT_S = 3.0
_QUEUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


def broker_kind(url: str) -> str:
    """`redis` or `amqp` for a broker URL; ConfigError naming the setting otherwise."""
    scheme = url.partition("://")[0].lower()
    if "://" not in url or scheme not in SCHEMES:
        raise ConfigError(
            f"CLEARSCAN_BROKER_URL must be redis://host:6379/0 or amqp://user:password@host//, "
            f"not {scheme + '://...' if '://' in url else repr(url)}"
        )
    return SCHEMES[scheme]


def make_celery(settings: Settings) -> Celery:
    """The Celery app for this broker (ConfigError for an unusable URL or a missing extra)."""
    url = settings.broker_url or ""
    kind = broker_kind(url)
    try:
        from celery import Celery
    except ImportError as exc:
        raise ConfigError(
            "CLEARSCAN_BROKER_URL needs Celery, which this install lacks: "
            f"pip install 'clearscan[queue]' ({exc})"
        ) from None
    app = Celery("clearscan", broker=url, set_as_current=False)
    transport: dict[str, Any] = {}
    if kind == "redis":
        transport["visibility_timeout"] = settings.broker_visibility_timeout_seconds
    else:
        transport["confirm_publish"] = True  # a publish returns once RabbitMQ has the message
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="default",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport,
        broker_connection_timeout=CONNECT_TIMEOUT_S,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def queue_of(name: str, kind: str) -> Queue:
    """The kombu queue for a job queue name: a quorum queue on RabbitMQ, a list on Redis."""
    from kombu import Queue

    args = {"x-queue-type": "quorum"} if kind == "amqp" else None
    return Queue(name, routing_key=name, queue_arguments=args, durable=True)


class CeleryQueue:
    """The publishing side: the API (and anything that submits jobs) sends job ids."""

    name = "celery"
    runs_here = False

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.kind = broker_kind(settings.broker_url or "")
        self.app = make_celery(settings)
        self.sessions = sessions
        self._where = _redact(settings.broker_url or "")
        self.routes = dict(settings.job_routes)
        bad = sorted(q for q in self.routes.values() if not _QUEUE.match(q))
        if bad:
            raise ConfigError(f"CLEARSCAN_JOB_ROUTES names invalid queue(s): {bad}")

    def route(self, kind: str) -> str:
        """The queue for jobs of `kind`: CLEARSCAN_JOB_ROUTES, else `default`."""
        return self.routes.get(kind, "default")

    def check(self) -> None:
        """A fresh connection to the broker, or QueueUnavailable naming it."""
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT_S)
                if self.kind == "redis":
                    conn.default_channel.client.ping()
        except Exception as exc:  # kombu and redis raise their own families
            log.error("job broker %s unreachable: %s", self._where, type(exc).__name__)
            raise QueueUnavailable(
                f"the job queue ({self._where}) is unreachable, so nothing was submitted; "
                "try again when it is back"
            ) from None

    def deliver(self, jobs: Sequence[tuple[str, str]]) -> None:
        sent = []
        for job_id, queue in jobs:
            try:
                self.app.send_task(
                    TASK,
                    args=[job_id],
                    queue=queue_of(queue, self.kind),
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
                )
                sent.append(job_id)
            except Exception as exc:  # the sweep delivers it again from the table
                log.error("job %s not delivered (%s); the sweep will", job_id, type(exc).__name__)
        service.mark_delivered(sessions=self.sessions, job_ids=sent)

    def start(self) -> None:
        """Nothing runs in this process: `clearscan worker` processes run the jobs."""

    def stop(self, timeout: float | None = 5.0) -> None:
        self.app.close()


def _redact(url: str) -> str:
    """A broker URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}{sep}{user + '@' if user else ''}{host}"
