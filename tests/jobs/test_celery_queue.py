"""Celery delivery with the real Redis of the host: the API with CLEARSCAN_BROKER_URL queues
jobs and runs none itself; a broker that is down refuses a submission with 503 and writes
nothing; `clearscan worker` (the real command and handlers) runs a queued training run; the
worker refuses to start without a broker or against an old schema."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from clearscan.app import create_app
from clearscan.audit.models import AuditEvent
from clearscan.cli.main import app as cli
from clearscan.config import ConfigError, Settings
from clearscan.jobs.celery_queue import CeleryQueue, broker_kind, make_celery
from clearscan.jobs.delivery import InProcessWorker, QueueUnavailable
from clearscan.jobs.models import Job
from tests.conftest import ADMIN_PASSWORD, login
from tests.drills.test_worker_drills import free_port, required
from tests.training.test_training_runs import RUNS, blob_zip, get_run, upload

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/14"


@pytest.fixture
def redis_db() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.ConnectionError:
        required("Redis on 127.0.0.1:6379")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_celery_settings_lose_nothing():
    app = make_celery(Settings(broker_url=REDIS, broker_visibility_timeout_seconds=7200))
    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 7200
    amqp = make_celery(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert amqp.conf.broker_transport_options == {"confirm_publish": True}


@pytest.mark.parametrize("url", ["http://broker:6379", "redis", "kafka://x:9092", "sqs://q"])
def test_broker_url_must_be_redis_or_amqp(url):
    with pytest.raises(ConfigError, match="CLEARSCAN_BROKER_URL"):
        broker_kind(url)


def test_job_routes_pick_the_queue(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url=REDIS, job_routes={"train": "gpu"})
    queue = CeleryQueue(settings, sessions=None)  # type: ignore[arg-type]
    assert queue.route("train") == "gpu" and queue.route("evaluate") == "default"
    with pytest.raises(ConfigError, match="CLEARSCAN_JOB_ROUTES"):
        CeleryQueue(settings.model_copy(update={"job_routes": {"train": "a b"}}), None)  # type: ignore[arg-type]


def test_broker_down_refuses_quickly_and_names_it(tmp_path):
    settings = Settings(data_dir=tmp_path, broker_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    queue = CeleryQueue(settings, sessions=None)  # type: ignore[arg-type]
    t0 = time.monotonic()
    with pytest.raises(QueueUnavailable) as info:
        queue.check()
    assert time.monotonic() - t0 < 5
    assert info.value.status_code == 503
    assert "127.0.0.1" in info.value.detail and "s3cret" not in info.value.detail


def broker_app(settings: Settings, broker_url: str, model_cache) -> TestClient:
    return TestClient(
        create_app(settings.model_copy(update={"broker_url": broker_url}), model_cache=model_cache),
        raise_server_exceptions=False,
    )


def count(client: TestClient, model) -> int:
    state = client.app.state.clearscan  # type: ignore[attr-defined]
    with state.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


def test_broker_down_at_submit_is_503_and_nothing_is_written(settings, model_cache):
    with broker_app(settings, f"redis://127.0.0.1:{free_port()}/0", model_cache) as client:
        headers = login(client, "admin", ADMIN_PASSWORD)
        upload(client, headers, "blobs", blob_zip(per_class=4))
        jobs_before, events_before = count(client, Job), count(client, AuditEvent)
        r = client.post(RUNS, headers=headers, json={"dataset": "blobs", "epochs": 1})
        assert r.status_code == 503, r.text
        assert "job queue" in r.json()["detail"] and "nothing was submitted" in r.json()["detail"]
        assert count(client, Job) == jobs_before == 0
        assert count(client, AuditEvent) == events_before  # not even the submission's event


def test_api_with_a_broker_queues_and_runs_nothing_itself(settings, model_cache, redis_db):
    settings = settings.model_copy(update={"job_routes": {"train": "gpu"}})
    with broker_app(settings, REDIS, model_cache) as client:
        state = client.app.state.clearscan  # type: ignore[attr-defined]
        assert isinstance(state.jobs, CeleryQueue) and not isinstance(state.jobs, InProcessWorker)
        headers = login(client, "admin", ADMIN_PASSWORD)
        upload(client, headers, "blobs", blob_zip(per_class=4))
        r = client.post(RUNS, headers=headers, json={"dataset": "blobs", "epochs": 1})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        assert redis_db.llen("gpu") == 1  # type: ignore[attr-defined]  # CLEARSCAN_JOB_ROUTES
        assert redis_db.llen("default") == 0  # type: ignore[attr-defined]
        time.sleep(1.0)
        run = get_run(client, headers, run_id)
        assert run["status"] == "queued"  # no thread of the API took it
        with state.sessions() as db:
            job = db.get(Job, run_id)
            assert job.delivered_at is not None and job.queue == "gpu"


def test_clearscan_worker_runs_a_queued_training_run(settings, model_cache, redis_db, tmp_path):
    env = {
        **os.environ,
        "CLEARSCAN_DATA_DIR": str(settings.data_dir),
        "CLEARSCAN_BROKER_URL": REDIS,
        "CLEARSCAN_SECRET_KEY": settings.secret_key or "",
        "CLEARSCAN_JOB_LEASE_SECONDS": "5",
    }
    with broker_app(settings, REDIS, model_cache) as client:
        headers = login(client, "admin", ADMIN_PASSWORD)
        upload(client, headers, "blobs", blob_zip(per_class=8))
        r = client.post(
            RUNS, headers=headers, json={"dataset": "blobs", "epochs": 1, "model_name": "queued"}
        )
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        metrics_port = free_port()
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "clearscan.cli.main", "worker", "--concurrency", "1"),
                *("--metrics-port", str(metrics_port)),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            while (run := get_run(client, headers, run_id))["status"] in ("queued", "running"):
                assert proc.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, run
                time.sleep(0.3)
            # the pool process that ran it counted it; the worker's endpoint serves that count
            scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        finally:
            os.killpg(proc.pid, 15)  # SIGTERM: a warm shutdown
            proc.wait(30)
        finished = 'clearscan_jobs_finished_total{kind="train",status="succeeded"} 1.0'
        assert finished in scraped, scraped[:2000]
        durations = 'clearscan_job_duration_seconds_count{kind="train",status="succeeded"} 1.0'
        assert durations in scraped
        assert run["status"] == "succeeded", (run, (tmp_path / "worker.log").read_text()[-3000:])
        assert run["result"]["model"].startswith("queued:")
        with client.app.state.clearscan.sessions() as db:  # type: ignore[attr-defined]
            job = db.get(Job, run_id)
            assert job.attempts == 1 and job.worker and str(proc.pid) not in job.worker


def test_worker_refuses_without_a_broker_or_on_an_old_schema(tmp_path, monkeypatch):
    monkeypatch.delenv("CLEARSCAN_BROKER_URL", raising=False)
    runner = CliRunner()
    r = runner.invoke(cli, ["worker", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "CLEARSCAN_BROKER_URL is not set" in r.output
    monkeypatch.setenv("CLEARSCAN_BROKER_URL", REDIS)
    r = runner.invoke(cli, ["worker", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "clearscan db upgrade" in r.output, r.output
    monkeypatch.setenv("CLEARSCAN_BROKER_URL", "kafka://broker:9092")
    r = runner.invoke(cli, ["worker", "--data-dir", str(tmp_path)])
    assert r.exit_code == 2 and "redis://" in r.output


def test_a_taken_metrics_port_is_a_clear_refusal(settings, redis_db):
    import socket

    from clearscan.db.migrate import upgrade

    upgrade(settings.sqlalchemy_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "CLEARSCAN_DATA_DIR": str(settings.data_dir),
            "CLEARSCAN_BROKER_URL": REDIS,
            "CLEARSCAN_SECRET_KEY": settings.secret_key or "",
        }
        r = subprocess.run(
            [sys.executable, "-m", "clearscan.cli.main", "worker", "--metrics-port", str(port)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"cannot serve metrics on port {port}" in r.stderr and "Traceback" not in r.stderr
