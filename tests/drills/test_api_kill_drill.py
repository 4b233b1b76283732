"""Drill: the API process is killed with SIGKILL while batches are being submitted, at
different moments of the request, and restarted. Every batch in the database is whole (its job
row and every one of its images' items) or absent; a client that retries with its
Idempotency-Key gets the one batch; nothing is half-written. Real PostgreSQL and Redis."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from clearscan.batches.models import BatchItem
from clearscan.config import Settings
from clearscan.db import create_db_engine, make_session_factory
from clearscan.jobs.models import Job
from tests.conftest import ADMIN_PASSWORD, pg_available, pg_database, png_bytes
from tests.drills.test_worker_drills import free_port, required, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 150


def archive(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(IMAGES):
            zf.writestr(f"study/{i:03d}.png", png_bytes(rng.random((96, 96))))
    return buf.getvalue()


class Api:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        s = self.settings
        env = {
            **os.environ,
            "CLEARSCAN_DATA_DIR": str(s.data_dir),
            "CLEARSCAN_DATABASE_URL": s.sqlalchemy_url,
            "CLEARSCAN_BROKER_URL": s.broker_url or "",
            "CLEARSCAN_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "CLEARSCAN_SECRET_KEY": "drill-secret-key-that-is-long-enough-0123456789",
        }
        log = open(self.log_dir / f"api-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clearscan.cli.main", "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, 60, "the API to be ready", step=0.2)

    def ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the API exited"
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def token(self) -> dict[str, str]:
        r = httpx.post(
            f"{self.url}/api/v1/auth/token",
            data={"username": "admin", "password": ADMIN_PASSWORD},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def api(tmp_path) -> Iterator[Api]:
    if not pg_available():
        required("PostgreSQL on 127.0.0.1:5432")
    import redis

    broker = "redis://127.0.0.1:6379/12"
    try:
        redis.Redis.from_url(broker).flushdb()
    except redis.ConnectionError:
        required("Redis on 127.0.0.1:6379")
    base = Settings(data_dir=tmp_path / "data", broker_url=broker)
    with pg_database(base) as settings:
        a = Api(settings, tmp_path)
        try:
            yield a
        except BaseException:
            for log in sorted(tmp_path.glob("api-*.log")):
                sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}\n")
            raise
        finally:
            a.kill()
            redis.Redis.from_url(broker).flushdb()


def test_api_killed_mid_submission_leaves_whole_batches_or_none(api):
    api.start()
    payloads = [archive(seed) for seed in range(3)]
    outcomes: list[tuple[str, str]] = []  # (idempotency key, "accepted" | "cut")
    delays = (0.01, 0.04, 0.07, 0.1, 0.2)  # from mid-upload to after the reply
    for n, delay in enumerate(delays):
        key = uuid.uuid4().hex
        headers = {**api.token(), "Idempotency-Key": key}
        result: dict[str, object] = {}

        def send(
            h: dict[str, str] = headers,
            body: bytes = payloads[n % 3],
            result: dict[str, object] = result,
        ) -> None:
            try:
                r = httpx.post(
                    f"{api.url}/api/v1/batches",
                    headers=h,
                    files={"file": ("study.zip", body, "application/zip")},
                    timeout=30,
                )
                result["status"] = r.status_code
            except httpx.HTTPError as exc:
                result["error"] = type(exc).__name__

        t = threading.Thread(target=send)
        t.start()
        time.sleep(delay)
        api.kill()  # SIGKILL mid-request (or just after it, for the longer delays)
        t.join(30)
        assert not t.is_alive()
        assert result.get("status") in (202, None), result
        outcomes.append((key, "accepted" if result.get("status") == 202 else "cut"))
        api.start()

        # the client retries with the same key: it gets the one batch, whole
        r = httpx.post(
            f"{api.url}/api/v1/batches",
            headers={**api.token(), "Idempotency-Key": key},
            files={"file": ("study.zip", payloads[n % 3], "application/zip")},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        replayed = r.headers.get("Idempotent-Replayed") == "true"
        if outcomes[-1][1] == "accepted":
            assert replayed  # acknowledged before the kill: kept, and not made twice

    engine = create_db_engine(api.settings.sqlalchemy_url)
    try:
        with make_session_factory(engine)() as db:
            batches = db.scalars(select(Job).where(Job.kind == "batch")).all()
            counts = dict(
                db.execute(
                    select(BatchItem.batch_id, func.count()).group_by(BatchItem.batch_id)
                ).all()
            )
            orphans = db.scalar(
                select(func.count())
                .select_from(BatchItem)
                .where(BatchItem.batch_id.not_in(select(Job.id)))
            )
    finally:
        engine.dispose()
    assert orphans == 0
    assert len(batches) == len(delays)  # one per key: none lost, none made twice
    assert sorted(b.idempotency_key for b in batches) == sorted(k for k, _ in outcomes)
    for b in batches:
        assert b.params["items"] == IMAGES and counts.get(b.id) == IMAGES, (b.id, counts)
    assert any(o == "cut" for _, o in outcomes)  # at least one kill landed mid-request
    sys.stderr.write(f"outcomes of the killed requests: {[o for _, o in outcomes]}\n")
