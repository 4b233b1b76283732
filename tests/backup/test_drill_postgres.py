"""The restore drill on PostgreSQL (pg_dump -Fc / pg_restore), encrypted: back up a running
server, drop its database and data dir, restore into a new empty database, compare."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clearscan.app import create_app
from clearscan.backup import crypto, service
from clearscan.backup.errors import TargetNotEmpty
from clearscan.backup.target import LocalLocation
from tests.backup.conftest import check_restored, populate, snapshot_state, sources, target
from tests.conftest import ADMIN_PASSWORD, login, pg_available, pg_database

pytestmark = pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not running")


def test_postgres_drill_encrypted(settings, model_cache, tmp_path: Path):
    key = crypto.parse_key(crypto.new_key())
    location = LocalLocation(tmp_path / "backups")
    with (
        pg_database(settings) as source,
        TestClient(create_app(source, model_cache=model_cache)) as client,
    ):
        populate(client, login(client, "admin", ADMIN_PASSWORD))
        before = snapshot_state(source)
        t0 = time.monotonic()
        made = service.create(sources(source), location, key=key)  # while it serves
        took_backup = time.monotonic() - t0
    # the source database is dropped here: the disaster
    assert made.database.kind == "postgresql" and made.database.path.endswith(".pgdump")
    assert made.encryption is not None and made.encryption.key_id == crypto.key_id(key)
    # sealed backups carry the data dir's keys: the audit chain verifies without them at hand
    assert "keys/audit_key" in {k.path for k in made.keys}
    raw = (tmp_path / "backups" / made.name / made.database.path).read_bytes()
    assert raw.startswith(crypto.MAGIC) and b"PGDMP" not in raw[:64]
    service.verify(location, made.name, key=key)
    shutil.rmtree(settings.data_dir)

    with pg_database(settings) as fresh:
        # a database with tables is refused before anything is written
        with pg_database(settings) as busy:
            from clearscan.db.migrate import upgrade

            upgrade(busy.sqlalchemy_url)
            with pytest.raises(TargetNotEmpty, match="already has"):
                service.restore(location, made.name, target(busy), key=key)
            assert not busy.data_dir.exists() or not any(busy.data_dir.iterdir())
        t0 = time.monotonic()
        report = service.restore(location, made.name, target(fresh), key=key)
        took_restore = time.monotonic() - t0
        assert report.audit_events > 0
        print(
            f"\nPostgreSQL drill (encrypted): backup {took_backup:.2f} s, restore "
            f"{took_restore:.2f} s, {made.total_bytes / 2**20:.1f} MiB, {len(made.blobs)} blobs"
        )
        check_restored(fresh, before, lambda s: create_app(s, model_cache=model_cache))
