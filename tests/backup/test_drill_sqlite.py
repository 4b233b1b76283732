"""The restore drill on SQLite: back up a running server, wipe its data dir, restore, compare."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from clearscan.app import create_app
from clearscan.backup import service
from clearscan.backup.target import LocalLocation
from tests.backup.conftest import check_restored, populate, snapshot_state, sources, target
from tests.conftest import ADMIN_PASSWORD, login


def test_sqlite_drill(settings, model_cache, tmp_path: Path):
    app = create_app(settings, model_cache=model_cache)
    location = LocalLocation(tmp_path / "backups")
    with TestClient(app, raise_server_exceptions=False) as client:
        populate(client, login(client, "admin", ADMIN_PASSWORD))
        before = snapshot_state(settings)
        t0 = time.monotonic()
        made = service.create(sources(settings), location)  # while the server runs
        took_backup = time.monotonic() - t0
    assert made.database.kind == "sqlite" and made.alembic_revision
    assert made.encryption is None and made.keys == []  # secrets never travel unsealed
    assert made.missing_blobs == []
    assert set(made.database.tables) >= {
        "cases",
        "images",
        "predictions",
        "reviews",
        "audit_events",
    }
    assert {b.sha256 for b in made.blobs} <= set(before.blobs)
    assert any(m.path.endswith("model.onnx") for m in made.models)

    service.verify(location, made.name)
    shutil.rmtree(settings.data_dir)  # the disaster

    # the operator brings the audit key from where it is kept (CLEARSCAN_AUDIT_KEY)
    restored = settings.model_copy(update={"audit_key": before.audit_key})
    t0 = time.monotonic()
    report = service.restore(location, made.name, target(restored))
    took_restore = time.monotonic() - t0
    assert report.rows == sum(before.counts.values())
    assert report.audit_events > 0 and report.blobs_checked == len(made.blobs)
    print(
        f"\nSQLite drill: backup {took_backup:.2f} s, restore {took_restore:.2f} s, "
        f"{made.total_bytes / 2**20:.1f} MiB, {len(made.blobs)} blobs"
    )
    check_restored(restored, before, lambda s: create_app(s, model_cache=model_cache))
