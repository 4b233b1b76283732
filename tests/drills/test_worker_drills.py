"""Drills: Celery workers killed with SIGKILL mid-job, a broker restarted mid-run, on the real
PostgreSQL, Redis and RabbitMQ of the host. Every job must end `succeeded` exactly once: its
side effect (a `drill_effects` row committed with the job's end) appears once per idempotency
key, none lost, none duplicated. Waits are bounded; each drill takes well under a minute."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from clearscan.config import Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.db.migrate import upgrade
from clearscan.jobs import service
from clearscan.jobs.celery_queue import CeleryQueue
from clearscan.jobs.delivery import commit_and_deliver
from clearscan.jobs.models import Job
from tests.conftest import pg_available, pg_database
from tests.drills.drill_worker import EFFECTS_DDL

ROOT = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
REDELIVER_S = 4.0


def required(what: str) -> None:
    if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
        pytest.fail(f"{what} is required for the drills")
    pytest.skip(f"{what} not available")


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(step)


class Fleet:
    """A PostgreSQL database, a broker, and `clearscan worker` processes started and killed."""

    def __init__(self, settings: Settings, queue: str, log_dir: Path) -> None:
        self.settings = settings
        self.queue = queue
        self.log_dir = log_dir
        self.engine = create_db_engine(settings.sqlalchemy_url)
        self.sessions = make_session_factory(self.engine)
        self.publisher = CeleryQueue(settings, self.sessions)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.started = 0

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "CLEARSCAN_DATA_DIR": str(s.data_dir),
            "CLEARSCAN_DATABASE_URL": s.sqlalchemy_url,
            "CLEARSCAN_BROKER_URL": s.broker_url or "",
            "CLEARSCAN_JOB_LEASE_SECONDS": str(LEASE_S),
            "CLEARSCAN_JOB_REDELIVER_SECONDS": str(REDELIVER_S),
            "CLEARSCAN_SECRET_KEY": "drill-secret-key-that-is-long-enough-0123456789",
            "PYTHONPATH": str(ROOT),
        }

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        self.started += 1
        log = open(self.log_dir / f"worker-{self.started}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.drills.drill_worker", self.queue, str(concurrency)],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL takes the pool too
        )
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def submit(self, n: int, steps: int = 4, step_s: float = 0.25) -> list[str]:
        keys = []
        for _ in range(n):
            key = uuid.uuid4().hex
            with self.sessions() as db:
                job = service.submit(
                    db=db,
                    kind="drill",
                    params={"key": key, "steps": steps, "step_s": step_s},
                    actor="drill",
                    idempotency_key=key,
                    max_attempts=10,
                )
                commit_and_deliver(db=db, queue=self.publisher, jobs=[job])
            keys.append(key)
        return keys

    def statuses(self) -> dict[str, int]:
        with self.sessions() as db:
            rows = db.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {status: int(count) for status, count in rows}

    def running_mid_job(self, since: datetime) -> bool:
        """A job claimed after `since` (by the current worker) is running and has reported
        progress: a kill now lands mid-job."""
        with self.sessions() as db:
            jobs = db.scalars(
                select(Job).where(Job.status == "running", Job.started_at > since)
            ).all()
        return any((j.progress or {}).get("step", 0) >= 1 for j in jobs)

    def check_exactly_once(self, keys: list[str]) -> dict[str, int]:
        with self.sessions() as db:
            effects = db.execute(text("SELECT key, count(*) FROM drill_effects GROUP BY key")).all()
            jobs = db.scalars(select(Job)).all()
        per_key = {k: int(c) for k, c in effects}
        assert sorted(per_key) == sorted(keys), "a side effect is missing or foreign"
        duplicated = {k: c for k, c in per_key.items() if c != 1}
        assert duplicated == {}, f"side effects duplicated: {duplicated}"
        assert len(jobs) == len(keys)
        assert all(j.status == "succeeded" for j in jobs), [(j.status, j.error) for j in jobs]
        assert all(j.result == {"key": j.idempotency_key} for j in jobs)
        assert {j.queue for j in jobs} == {self.queue}
        return {j.id: j.attempts for j in jobs}

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                self.kill(proc)
        self.publisher.stop()
        self.engine.dispose()


@contextmanager
def fleet(tmp_path: Path, broker_url: str, queue: str) -> Iterator[Fleet]:
    if not pg_available():
        required("PostgreSQL on 127.0.0.1:5432")
    base = Settings(
        data_dir=tmp_path / "data",
        secret_key="drill-secret-key-that-is-long-enough-0123456789",
        broker_url=broker_url,
        job_lease_seconds=LEASE_S,
        job_redeliver_seconds=REDELIVER_S,
        job_routes={"drill": queue},  # the drill's jobs travel on the drill's own queue
    )
    with pg_database(base) as settings:
        upgrade(settings.sqlalchemy_url)
        f = Fleet(settings, queue, tmp_path)
        with f.sessions() as db:
            db.execute(text(EFFECTS_DDL))
            db.commit()
        try:
            yield f
        except BaseException:
            for log in sorted(tmp_path.glob("worker-*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
            raise
        finally:
            f.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database of the host's server for this test alone, emptied before and after."""
    if not _answers("127.0.0.1", 6379):
        required("Redis on 127.0.0.1:6379")
    import redis

    url = "redis://127.0.0.1:6379/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def kill_workers_mid_job(f: Fleet, kills: int, timeout: float) -> None:
    since = datetime.now(UTC)
    proc = f.start_worker()
    for _ in range(kills):
        wait_for(lambda t=since: f.running_mid_job(t), timeout, "a job mid-way before a kill")
        f.kill(proc)
        since = datetime.now(UTC)
        proc = f.start_worker()


def test_workers_killed_mid_job_five_times_lose_and_duplicate_nothing(tmp_path, redis_url):
    with fleet(tmp_path, redis_url, queue=f"drill-{uuid.uuid4().hex[:8]}") as f:
        keys = f.submit(20)
        t0 = time.monotonic()
        kill_workers_mid_job(f, kills=5, timeout=20)
        wait_for(lambda: f.statuses().get("succeeded") == 20, 45, "all 20 jobs to succeed")
        elapsed = time.monotonic() - t0
        attempts = f.check_exactly_once(keys)
        # the kills landed mid-job: at least five jobs needed a second attempt
        assert sum(1 for a in attempts.values() if a >= 2) >= 5, attempts
        assert f.started == 6
        tries = sorted(attempts.values())
        sys.stderr.write(f"20 jobs, 5 kills: {elapsed:.1f} s, attempts {tries}\n")


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A Redis server of this test's own (it is restarted), and a function that restarts it."""
    exe = shutil.which("redis-server")
    if exe is None:
        required("redis-server")
    port = free_port()
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        procs.append(
            subprocess.Popen(
                [*args, "--dir", str(tmp_path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: _answers("127.0.0.1", port), 10, "redis-server to listen")

    def restart() -> None:
        procs[-1].kill()  # SIGKILL: nothing is saved, every queued message is gone
        procs[-1].wait(10)
        time.sleep(1.0)
        start()

    start()
    try:
        yield f"redis://127.0.0.1:{port}/0", restart
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_redis_restarted_mid_run_loses_and_duplicates_nothing(tmp_path, own_redis):
    url, restart = own_redis
    with fleet(tmp_path, url, queue="default") as f:
        keys = f.submit(12)
        f.start_worker()
        wait_for(lambda: f.statuses().get("succeeded", 0) >= 2, 30, "two jobs to succeed")
        restart()  # the broker loses every message it held, reserved ones included
        wait_for(lambda: f.statuses().get("succeeded") == 12, 45, "all 12 jobs to succeed")
        f.check_exactly_once(keys)


def test_rabbitmq_quorum_queue_workers_killed_mid_job(tmp_path):
    if not _answers("127.0.0.1", 5672):
        required("RabbitMQ on 127.0.0.1:5672")
    queue = f"clearscan-drill-{uuid.uuid4().hex[:8]}"
    url = "amqp://guest:guest@127.0.0.1:5672//"
    with fleet(tmp_path, url, queue=queue) as f:
        try:
            keys = f.submit(10)
            kill_workers_mid_job(f, kills=2, timeout=20)
            wait_for(lambda: f.statuses().get("succeeded") == 10, 45, "all 10 jobs to succeed")
            f.check_exactly_once(keys)
            if shutil.which("rabbitmqctl"):  # the job queue is a quorum queue
                listed = subprocess.run(
                    ["rabbitmqctl", "-q", "list_queues", "name", "type"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=True,
                ).stdout
                types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
                assert types.get(queue) == "quorum", types.get(queue)
        finally:
            with f.publisher.app.connection_for_write() as conn:
                conn.default_channel.queue_delete(queue)
