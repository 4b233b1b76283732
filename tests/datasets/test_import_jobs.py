"""Dataset import as a job (``POST /datasets`` with ``Prefer: respond-async``): 202 at once, the
import runs on the worker and makes the same dataset as a synchronous import of the same file; a
bad dataset fails the job with the synchronous API's reason and imports nothing; a taken or
invalid name is refused at once with no job; a broker that is down refuses with 503 and nothing
written, one that is up carries the import to `clearscan worker`; a run killed before or after
the dataset's commit leaves exactly one dataset and a succeeded job; an idempotency key names one
import."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from clearscan.app import create_app
from clearscan.audit.models import AuditEvent
from clearscan.bootstrap import job_handlers
from clearscan.datasets import service as dataset_service
from clearscan.datasets.jobs import DATASET_IMPORT_KIND
from clearscan.datasets.models import Dataset, DatasetItem
from clearscan.jobs import service as jobs
from clearscan.jobs.models import FINISHED, Job
from clearscan.jobs.service import JobContext
from tests.conftest import ADMIN_PASSWORD, login
from tests.datasets.test_datasets_api import (
    CSV,
    URL,
    audit_events,
    blob_files,
    class_zip,
    temp_leftovers,
    upload,
    zip_bytes,
)

ROOT = Path(__file__).resolve().parents[2]
REDIS = "redis://127.0.0.1:6379/11"
ASYNC = {"Prefer": "respond-async"}
IMPORTS = "/api/v1/dataset-imports"


def free_port() -> int:
    """A port nothing listens on (a broker that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Killed(BaseException):
    """A stand-in for SIGKILL: no handler catches it, nothing after it runs."""


def upload_async(
    client: TestClient, headers: dict[str, str], data: bytes, key: str | None = None, **form: Any
) -> Any:
    extra = {**ASYNC, **({"Idempotency-Key": key} if key else {})}
    return upload(client, {**headers, **extra}, data, **form)


def wait_import(client: TestClient, headers: dict[str, str], url: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        body = dict(r.json())
        if body["status"] in FINISHED:
            return body
        assert time.monotonic() < deadline, f"import still {body['status']}: {body['progress']}"
        time.sleep(0.1)


def count(app: FastAPI, model: Any, *where: Any) -> int:
    with app.state.clearscan.sessions() as db:
        return int(db.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def import_jobs(app: FastAPI) -> int:
    return count(app, Job, Job.kind == DATASET_IMPORT_KIND)


def items_of(app: FastAPI, dataset_id: str) -> list[tuple[int, str, int, str, int, int]]:
    with app.state.clearscan.sessions() as db:
        rows = db.execute(
            select(
                DatasetItem.idx,
                DatasetItem.split,
                DatasetItem.label,
                DatasetItem.blob,
                DatasetItem.height,
                DatasetItem.width,
            )
            .where(DatasetItem.dataset_id == dataset_id)
            .order_by(DatasetItem.idx)
        ).all()
        return [tuple(r) for r in rows]


SAME = ("kind", "source_format", "content_hash", "classes", "counts", "n_items", "warnings")


@pytest.mark.parametrize(
    ("data", "form"),
    [
        (zip_bytes(class_zip({"cat": 12, "dog": 14})), {}),
        (CSV.encode(), {"target": "label"}),
    ],
    ids=["image-folders", "csv"],
)
def test_async_import_is_202_and_makes_what_a_synchronous_import_makes(
    client, admin_headers, app, data, form
):
    sync = upload(client, admin_headers, data, name="now", **form)
    assert sync.status_code == 201, sync.text

    r = upload_async(client, admin_headers, data, name="later", **form)
    assert r.status_code == 202, r.text
    assert r.headers["Preference-Applied"] == "respond-async"
    body = r.json()
    assert r.headers["Location"] == f"{IMPORTS}/{body['id']}" == body["url"]
    assert body["name"] == "later" and body["status"] in ("queued", "running", "succeeded")
    assert body["error"] is None and "Idempotent-Replayed" not in r.headers

    done = wait_import(client, admin_headers, r.headers["Location"])
    assert done["status"] == "succeeded", done
    assert done["error"] is None and done["progress"]["stage"] == "importing"
    assert done["progress"]["bytes"] == done["progress"]["total_bytes"] == len(data)
    ds = done["dataset"]
    assert ds["name"] == "later" and ds["created_by"] == "admin"
    assert {k: ds[k] for k in SAME} == {k: sync.json()[k] for k in SAME}
    detail = client.get(f"{URL}/later", headers=admin_headers).json()
    assert detail["id"] == ds["id"] and detail["info"] == sync.json()["info"]
    assert items_of(app, ds["id"]) == items_of(app, sync.json()["id"])
    assert temp_leftovers(app) == []

    events = audit_events(client, admin_headers)
    assert [(e["outcome"], e["object_id"]) for e in events] == [
        ("success", ds["id"]),
        ("success", sync.json()["id"]),
    ]
    assert events[0]["actor"] == "admin" and events[0]["details"]["name"] == "later"
    r = client.get("/api/v1/audit?action=dataset.import_submit", headers=admin_headers)
    assert [e["object_id"] for e in r.json()["items"]] == [body["id"]]

    assert client.get(f"{IMPORTS}/missing", headers=admin_headers).status_code == 404


def test_a_bad_dataset_fails_the_job_with_the_synchronous_reason_and_imports_nothing(
    client, admin_headers, app
):
    data = zip_bytes(class_zip({"only": 6}))
    sync = upload(client, admin_headers, data, name="one-class")
    assert sync.status_code == 422, sync.text

    r = upload_async(client, admin_headers, data, name="one-class")
    assert r.status_code == 202, r.text
    done = wait_import(client, admin_headers, r.headers["Location"])
    assert done["status"] == "failed" and done["dataset"] is None
    assert done["error"] == sync.json()["detail"]
    assert count(app, Dataset) == 0 and count(app, DatasetItem) == 0
    assert temp_leftovers(app) == []
    events = audit_events(client, admin_headers)
    assert [e["outcome"] for e in events] == ["rejected", "rejected"]
    assert events[0]["details"]["reason"] == sync.json()["detail"]


def test_a_taken_or_invalid_name_is_refused_at_once_with_no_job(client, admin_headers, app):
    data = zip_bytes(class_zip({"a": 4, "b": 4}))
    assert upload(client, admin_headers, data, name="taken").status_code == 201
    sync = upload(client, admin_headers, data, name="taken")
    assert sync.status_code == 409, sync.text
    before = blob_files(app)

    r = upload_async(client, admin_headers, data, name="taken")
    assert r.status_code == 409, r.text
    assert r.json()["detail"] == sync.json()["detail"]
    r = upload_async(client, admin_headers, data, name="Bad Name!")
    assert r.status_code == 422 and "name" in r.json()["detail"], r.text
    assert import_jobs(app) == 0 and blob_files(app) == before
    assert temp_leftovers(app) == []
    outcomes = [e["outcome"] for e in audit_events(client, admin_headers)]
    assert outcomes == ["rejected", "rejected", "rejected", "success"]  # as synchronous imports

    app.state.clearscan.jobs.stop()  # a name an import not yet run will take
    assert upload_async(client, admin_headers, data, name="soon").status_code == 202
    r = upload_async(client, admin_headers, data, name="soon")
    assert r.status_code == 409 and "being imported" in r.json()["detail"], r.text
    assert import_jobs(app) == 1


def test_broker_down_is_503_and_nothing_is_written(settings, model_cache):
    down = settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})
    app = create_app(down, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = login(client, "admin", ADMIN_PASSWORD)
        events = count(app, AuditEvent)
        r = upload_async(client, headers, zip_bytes(class_zip({"a": 4, "b": 4})), name="x")
        assert r.status_code == 503, r.text
        assert "job queue" in r.json()["detail"] and "nothing was submitted" in r.json()["detail"]
        assert count(app, Job) == 0 and count(app, Dataset) == 0
        assert count(app, AuditEvent) == events  # not even the submission's event
        assert temp_leftovers(app) == []


@pytest.fixture
def redis_db() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CLEARSCAN_E2E_REQUIRED") == "1":
            pytest.fail("Redis on 127.0.0.1:6379 is required")
        pytest.skip("Redis on 127.0.0.1:6379 not available")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_a_clearscan_worker_runs_an_import_queued_through_a_broker(
    settings, model_cache, redis_db, tmp_path
):
    """The API queues the import on Redis and runs nothing itself; `clearscan worker` (the real
    command, its own process) reads the stored upload and makes the dataset."""
    queued = settings.model_copy(update={"broker_url": REDIS})
    env = {
        **os.environ,
        "CLEARSCAN_DATA_DIR": str(settings.data_dir),
        "CLEARSCAN_BROKER_URL": REDIS,
        "CLEARSCAN_SECRET_KEY": settings.secret_key or "",
    }
    app = create_app(queued, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = login(client, "admin", ADMIN_PASSWORD)
        r = upload_async(client, headers, zip_bytes(class_zip({"a": 5, "b": 5})), name="far")
        assert r.status_code == 202, r.text
        time.sleep(0.5)
        assert client.get(r.headers["Location"], headers=headers).json()["status"] == "queued"
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "clearscan.cli.main", "worker", "--concurrency", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            done = wait_import(client, headers, r.headers["Location"], timeout=90)
        finally:
            os.killpg(proc.pid, 15)  # SIGTERM: a warm shutdown
            proc.wait(30)
        assert done["status"] == "succeeded", (done, (tmp_path / "worker.log").read_text()[-3000:])
        assert done["dataset"]["name"] == "far" and done["dataset"]["n_items"] == 10
        with app.state.clearscan.sessions() as db:
            job = db.get(Job, done["id"])
            assert job.attempts == 1 and job.worker and str(proc.pid) not in job.worker


# --- killed and delivered again -----------------------------------------------------------------


def kill_after_commit(monkeypatch) -> None:
    """Die right after the import's commit, before the handler returns."""
    real = dataset_service.import_dataset

    def importing(**kw):
        real(**kw)
        raise Killed()

    monkeypatch.setattr(dataset_service, "import_dataset", importing)


def kill_inside_commit(monkeypatch) -> None:
    """Die as the job's end is written into the import's transaction, before its commit."""
    real = JobContext.complete

    def complete(self, db, result):
        real(self, db, result)
        raise Killed()

    monkeypatch.setattr(JobContext, "complete", complete)


@pytest.mark.parametrize("kill", [kill_inside_commit, kill_after_commit])
def test_a_killed_run_leaves_one_dataset_and_a_succeeded_job(
    client, admin_headers, app, monkeypatch, kill
):
    state = app.state.clearscan
    state.jobs.stop(timeout=60)  # this test plays the workers
    assert not state.jobs._thread.is_alive()
    r = upload_async(client, admin_headers, zip_bytes(class_zip({"a": 6, "b": 6})), name="once")
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    handlers = job_handlers(state)

    with monkeypatch.context() as m:
        kill(m)
        assert jobs.claim(sessions=state.sessions, job_id=job_id, worker="doomed:1")
        with pytest.raises(Killed):
            jobs.run_claimed(sessions=state.sessions, job_id=job_id, handlers=handlers)
    committed = kill is kill_after_commit
    assert count(app, Dataset) == (1 if committed else 0)

    with state.sessions() as db:  # its runner is gone: the lease expires, a sweep runs
        long_ago = datetime(2000, 1, 1, tzinfo=UTC)
        db.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=long_ago))
        db.commit()
    swept = jobs.sweep(sessions=state.sessions)
    assert swept.requeued == (0 if committed else 1) and swept.failed == 0
    # delivered again (a broker's redelivery, or the sweep's): claimed only if not over
    if jobs.claim(sessions=state.sessions, job_id=job_id, worker="next:2"):
        assert not committed
        jobs.run_claimed(sessions=state.sessions, job_id=job_id, handlers=handlers)

    done = wait_import(client, admin_headers, f"{IMPORTS}/{job_id}", timeout=30)
    assert done["status"] == "succeeded", done
    assert done["dataset"]["name"] == "once" and done["dataset"]["n_items"] == 12
    assert count(app, Dataset) == 1 and count(app, DatasetItem) == 12
    with state.sessions() as db:
        job = db.get(Job, job_id)
        assert job.attempts == (1 if committed else 2)
        assert job.result["dataset_id"] == done["dataset"]["id"]
    successes = [e for e in audit_events(client, admin_headers) if e["outcome"] == "success"]
    assert len(successes) == 1


def test_an_idempotency_key_names_one_import(client, admin_headers, make_user, app):
    data = zip_bytes(class_zip({"a": 4, "b": 4}))
    first = upload_async(client, admin_headers, data, key="import-1", name="keyed")
    assert first.status_code == 202, first.text
    wait_import(client, admin_headers, first.headers["Location"])
    # a retry, after the import made the dataset (its name is now taken): the same import
    again = upload_async(client, admin_headers, data, key="import-1", name="keyed")
    assert again.status_code == 202, again.text
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json()["status"] == "succeeded" and again.json()["dataset"]["name"] == "keyed"
    assert import_jobs(app) == 1 and count(app, Dataset) == 1

    other = make_user("admin")  # the key names another admin's import
    r = upload_async(client, other, data, key="import-1", name="keyed-2")
    assert r.status_code == 409, r.text
    assert import_jobs(app) == 1


# --- the upload is staged, never a blob, and gone once the import ends -------------------------

PHI = (b"Doe^Jane", b"PID-4711")  # dicom_bytes' patient name and ID


def dicom_zip() -> bytes:
    from tests.conftest import chest_like, dicom_bytes

    return zip_bytes(
        {
            f"ds/{label}/{i:02d}.dcm": dicom_bytes(chest_like(64, 10 * n + i))
            for n, label in enumerate(("normal", "pneumonia"))
            for i in range(4)
        }
    )


def staged_files(app: FastAPI) -> list[str]:
    root = Path(app.state.clearscan.settings.blob_dir) / ".staging"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def files_holding_phi(root: Path) -> list[str]:
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and any(phi in p.read_bytes() for phi in PHI)
    ]


def test_the_raw_upload_is_staged_until_imported_and_no_identifier_is_kept(
    client, admin_headers, app
):
    state = app.state.clearscan
    state.jobs.stop()
    r = upload_async(client, admin_headers, dicom_zip(), name="dicoms")
    assert r.status_code == 202, r.text
    (key,) = staged_files(app)
    with state.sessions() as db:
        params = db.get(Job, r.json()["id"]).params
    assert params["staged"] == key and "sha256" not in params
    assert files_holding_phi(state.settings.data_dir) == [f"blobs/.staging/{key}"]

    state.jobs.start()
    done = wait_import(client, admin_headers, r.headers["Location"])
    assert done["status"] == "succeeded", done
    assert done["dataset"]["n_items"] == 8
    assert staged_files(app) == []
    assert files_holding_phi(state.settings.data_dir) == []


def test_a_failed_import_discards_its_upload(client, admin_headers, app):
    r = upload_async(client, admin_headers, zip_bytes(class_zip({"only": 6})), name="one")
    done = wait_import(client, admin_headers, r.headers["Location"])
    assert done["status"] == "failed"
    assert staged_files(app) == []


def test_an_import_submitted_before_uploads_were_staged_still_runs(client, admin_headers, app):
    """Job rows written by an earlier release name the upload's blob (`sha256`)."""
    state = app.state.clearscan
    state.jobs.stop()
    data = zip_bytes(class_zip({"a": 4, "b": 4}))
    r = upload_async(client, admin_headers, data, name="legacy")
    with state.sessions() as db:
        job = db.get(Job, r.json()["id"])
        params = dict(job.params)
        state.blobs.discard_staged(params.pop("staged"))
        del params["digest"]
        params["sha256"] = state.blobs.put(data)
        job.params = params
        db.commit()
    state.jobs.start()
    done = wait_import(client, admin_headers, r.headers["Location"])
    assert done["status"] == "succeeded", done
    assert done["dataset"]["n_items"] == 8
