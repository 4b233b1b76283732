"""Anchors in an S3 bucket with Object Lock (moto's S3 server on loopback): each anchor is an
object under COMPLIANCE retention, and verification compares the chain with the newest one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.exceptions import ClientError
from sqlalchemy import text

from clearscan.app import create_app
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from tests.storage.conftest import S3Server
from tests.storage.conftest import s3_server as s3_server  # the session fixture

CTX = audit.RequestContext(actor="tester")


@pytest.fixture
def locked_bucket(s3_server: S3Server) -> str:
    name = s3_server.new_bucket() + "-locked"
    s3_server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_anchor_goes_to_a_locked_object_and_is_checked(
    settings,
    model_cache,
    s3_server,
    locked_bucket,
    monkeypatch,
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s = settings.model_copy(
        update={
            "audit_anchor_s3_url": f"s3://{locked_bucket}/site-a",
            "s3_endpoint_url": s3_server.endpoint_url,
            "s3_region": "us-east-1",
            "audit_anchor_retention_days": 30,
        }
    )
    app = create_app(s, model_cache=model_cache)
    sessions = app.state.clearscan.sessions
    try:
        with sessions() as db:
            audit.record(audit.Entry(Action.CASE_VIEW), db=db, ctx=CTX)
            anchor = audit.anchor_now(db=db, ctx=CTX)
        client = s3_server.client()
        objects = client.list_objects_v2(Bucket=locked_bucket, Prefix="site-a/anchors/")
        keys = sorted(o["Key"] for o in objects["Contents"])
        assert len(keys) == 2  # start-up and now
        head = client.head_object(Bucket=locked_bucket, Key=keys[-1])
        assert head["ObjectLockMode"] == "COMPLIANCE"
        assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
        with pytest.raises(ClientError):  # a locked version cannot be deleted
            client.delete_object(Bucket=locked_bucket, Key=keys[-1], VersionId=head["VersionId"])
        assert f"{anchor.seq:015d}" in keys[-1]
        with sessions() as db:
            assert audit.verify_chain(db=db).ok
        # the file anchor is lost with the tail; the locked S3 object still names the head
        (s.data_dir / "audit-anchors.log").unlink()
        with sessions() as db:
            db.execute(text("DROP TRIGGER audit_events_no_delete"))
            db.execute(text("DELETE FROM audit_events WHERE seq >= 1"))
            db.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": "0" * 64})
            db.commit()
            report = audit.verify_chain(db=db)
        assert not report.ok and "S3 anchor" in (report.reason or "")
    finally:
        app.state.clearscan.engine.dispose()
