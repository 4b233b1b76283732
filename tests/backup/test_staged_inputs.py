"""A backup holds what the site keeps, not the raw uploads waiting in the staging area: a batch
queued when the backup was made comes back queued, and its images, which never left the staging
area, fail with the reason instead of being analysed from a copy of patient identifiers."""

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from clearscan.app import create_app
from clearscan.backup import service
from clearscan.backup.target import LocalLocation
from tests.backup.conftest import snapshot_state, sources, target
from tests.batches.helpers import make_zip, submit_zip, wait_batch
from tests.conftest import ADMIN_PASSWORD, chest_like, dicom_bytes, login

PHI = (b"Doe^Jane", b"PID-4711")


def test_staged_uploads_stay_out_of_backups(settings, model_cache, tmp_path: Path):
    app = create_app(settings, model_cache=model_cache)
    location = LocalLocation(tmp_path / "backups")
    with TestClient(app, raise_server_exceptions=False) as client:
        admin = login(client, "admin", ADMIN_PASSWORD)
        app.state.clearscan.jobs.stop()
        archive = make_zip({f"{i}.dcm": dicom_bytes(chest_like(96, i)) for i in range(2)})
        batch_id = submit_zip(client, admin, archive).json()["id"]
        before = snapshot_state(settings)
        made = service.create(sources(settings), location)
    assert made.missing_blobs == []  # the items' digests are no blob addresses
    backup_files = [p for p in (tmp_path / "backups").rglob("*") if p.is_file()]
    assert backup_files and not [p for p in backup_files if any(x in p.read_bytes() for x in PHI)]

    shutil.rmtree(settings.data_dir)
    restored = settings.model_copy(update={"audit_key": before.audit_key})
    service.restore(location, made.name, target(restored))
    app = create_app(restored, initialised=True, model_cache=model_cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        batch = wait_batch(client, login(client, "admin", ADMIN_PASSWORD), batch_id)
    assert [it["status"] for it in batch["items"]] == ["failed", "failed"]
    assert all("no longer staged" in it["error"] for it in batch["items"])
