"""The restore drill with S3 blobs (a real S3 protocol server): blobs in one bucket, backups in
another, restored into a third, empty one."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from clearscan.app import create_app
from clearscan.backup import options, service
from clearscan.backup.target import S3Location, parse_backup
from tests.backup.conftest import check_restored, populate, snapshot_state, sources, target
from tests.conftest import ADMIN_PASSWORD, login
from tests.storage.conftest import S3Server


def test_s3_drill(settings, model_cache, s3_env: S3Server, tmp_path: Path):
    blobs, backups, fresh = (s3_env.new_bucket() for _ in range(3))
    source = settings.model_copy(
        update={"blob_url": f"s3://{blobs}/blobs", "s3_endpoint_url": s3_env.endpoint_url}
    )
    location = options.destination(source, f"s3://{backups}/nightly")
    assert isinstance(location, S3Location)
    with TestClient(create_app(source, model_cache=model_cache)) as client:
        populate(client, login(client, "admin", ADMIN_PASSWORD))
        before = snapshot_state(source)
        t0 = time.monotonic()
        made = service.create(sources(source), location)
        took_backup = time.monotonic() - t0
    assert made.blob_source == f"s3://{blobs}/blobs" and made.blobs
    keys = s3_env.client().list_objects_v2(Bucket=backups, Prefix=f"nightly/{made.name}/")
    assert any(o["Key"].endswith("manifest.json") for o in keys["Contents"])
    assert [b.name for b in service.list_backups(location)] == [made.name]

    # a backup named by its URL, as the CLI takes it
    where, name = parse_backup(f"s3://{backups}/nightly/{made.name}", options.s3_options(source))
    service.verify(where, name)

    shutil.rmtree(settings.data_dir)
    restored = source.model_copy(
        update={"blob_url": f"s3://{fresh}/blobs", "audit_key": before.audit_key}
    )
    t0 = time.monotonic()
    service.restore(where, name, target(restored))
    took_restore = time.monotonic() - t0
    print(f"\nS3 drill: backup {took_backup:.2f} s, restore {took_restore:.2f} s")
    check_restored(restored, before, lambda s: create_app(s, model_cache=model_cache))
