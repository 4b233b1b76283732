"""Helpers for the batch tests (API, pages, command line): archives of images, submitting and
waiting for a batch, and counting what a batch left in the database."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from clearscan.batches.models import BATCH_KIND, BatchItem
from clearscan.cases.models import Case
from clearscan.jobs.models import FINISHED, Job
from tests.conftest import chest_like, dicom_bytes, png_bytes

BATCHES = "/api/v1/batches"


def images(n: int) -> dict[str, bytes]:
    """`n` different images: PNGs, every third one a DICOM."""
    return {
        (f"scan-{i}.dcm" if i % 3 == 2 else f"scan-{i}.png"): (
            dicom_bytes(chest_like(128, i)) if i % 3 == 2 else png_bytes(chest_like(128, i))
        )
        for i in range(n)
    }


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def submit_zip(client: TestClient, headers: dict[str, str], data: bytes, **form: Any) -> Any:
    return client.post(
        BATCHES,
        headers=headers,
        files={"file": ("batch.zip", data, "application/zip")},
        data={k: str(v).lower() if isinstance(v, bool) else v for k, v in form.items()},
    )


def get_batch(client: TestClient, headers: dict[str, str], batch_id: str) -> dict[str, Any]:
    r = client.get(f"{BATCHES}/{batch_id}", headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_batch(
    client: TestClient, headers: dict[str, str], batch_id: str, timeout: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = get_batch(client, headers, batch_id)
        if batch["status"] in FINISHED:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch['status']}: {batch['progress']}"
        time.sleep(0.2)


def stored(app: FastAPI) -> dict[str, int]:
    """How many batch jobs, batch items and cases the app's database holds."""
    with app.state.clearscan.sessions() as db:
        return {
            "batches": db.scalar(select(func.count()).where(Job.kind == BATCH_KIND)) or 0,
            "items": db.scalar(select(func.count()).select_from(BatchItem)) or 0,
            "cases": db.scalar(select(func.count()).select_from(Case)) or 0,
        }


def audit_actions(client: TestClient, admin_headers: dict[str, str], action: str) -> list[dict]:
    r = client.get("/api/v1/audit", headers=admin_headers, params={"action": action})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])
