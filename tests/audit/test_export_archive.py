"""Audit export (CSV and JSON with the PS3.15 A.5.3 fields) and retention by archiving: the
archived events leave the live table only through a checkpoint, the live chain still verifies,
and the archive file verifies against the checkpoint."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError
from typer.testing import CliRunner

from clearscan.audit import keys
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.audit.archive import (
    ArchiveError,
    archive_older_than,
    verify_archive,
    verify_file,
)
from clearscan.audit.export import FIELDS
from clearscan.audit.models import AuditEvent
from clearscan.cli.main import app as cli

CTX = audit.RequestContext(actor="tester", client_addr="10.1.2.3")


def _add(sessions, n: int) -> None:
    with sessions() as db:
        audit.record(
            *[
                audit.Entry(Action.CASE_VIEW, object_type="case", object_id=f"c{i}")
                for i in range(n)
            ],
            db=db,
            ctx=CTX,
        )


def test_export_csv_and_json_with_the_ps3_15_fields(client, admin_headers, clinician_headers):
    r = client.get("/api/v1/audit/export?format=csv", headers=admin_headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert tuple(rows[0]) == FIELDS
    login = next(x for x in rows if x["event_id"] == "auth.login")
    assert login["event_outcome_indicator"] == "0" and login["event_action_code"] == "E"
    assert login["user_id"] == "admin" and login["network_access_point_id"]
    created = next(x for x in rows if x["event_id"] == "user.create")
    assert created["event_action_code"] == "C" and created["participant_object_type"] == "user"
    r = client.get("/api/v1/audit/export", headers=admin_headers)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    items = r.json()
    assert {"seq", "event_date_time", "user_id", "hash"} <= set(items[0])
    assert [i["seq"] for i in items] == sorted(i["seq"] for i in items)
    # the exports themselves are audited
    events = client.get("/api/v1/audit?action=audit.export", headers=admin_headers).json()
    assert events["total"] == 2
    # time window, bad input, admins only
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    r = client.get("/api/v1/audit/export", params={"since": later}, headers=admin_headers)
    assert r.json() == []
    for bad in ("yesterday", "0.5"):
        r = client.get(f"/api/v1/audit/export?since={bad}", headers=admin_headers)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "since"
    r = client.get(  # an empty window selects nothing
        "/api/v1/audit/export",
        params={"since": "2026-02-01T00:00:00", "until": "2026-01-01T00:00:00"},
        headers=admin_headers,
    )
    assert r.status_code == 200 and r.json() == []
    assert client.get("/api/v1/audit/export?format=xml", headers=admin_headers).status_code == 422
    assert client.get("/api/v1/audit/export", headers=clinician_headers).status_code == 403


def test_archive_then_live_chain_and_archive_verify(app, settings):
    sessions = app.state.clearscan.sessions
    _add(sessions, 6)
    with sessions() as db:
        total = db.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
        assert archive_older_than(db=db, settings=settings, days=1, ctx=CTX) is None  # all new
        later = datetime.now(UTC) + timedelta(days=10)
        result = archive_older_than(db=db, settings=settings, days=1, ctx=CTX, now=later)
    assert result is not None and result.count == total and result.first_seq == 1
    assert result.path.parent == settings.data_dir / "audit-archive"
    with sessions() as db:
        live = db.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
        assert [e.action for e in live] == ["audit.archive"]
        assert live[0].details["last_seq"] == result.last_seq
        assert live[0].details["sha256"] == result.sha256
        assert audit.verify_chain(db=db).ok
        assert verify_archive(result.path, db=db) == result
    _add(sessions, 2)
    with sessions() as db:
        assert audit.verify_chain(db=db).ok
        # the database refuses deleting live (unarchived) events even now
        with pytest.raises(DatabaseError):
            db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": live[0].seq})
        db.rollback()
        # a second archive covers the first checkpoint; the first file still verifies
        second = archive_older_than(
            db=db, settings=settings, days=1, ctx=CTX, now=datetime.now(UTC) + timedelta(days=9)
        )
        assert second is not None and second.first_seq == result.last_seq + 1
        assert audit.verify_chain(db=db).ok
        assert verify_archive(result.path, db=db) == result
        assert verify_archive(second.path, db=db) == second


def test_a_tampered_or_unknown_archive_is_refused(app, settings):
    sessions = app.state.clearscan.sessions
    _add(sessions, 3)
    with sessions() as db:
        later = datetime.now(UTC) + timedelta(days=10)
        result = archive_older_than(db=db, settings=settings, days=1, ctx=CTX, now=later)
    assert result is not None
    lines = result.path.read_text().splitlines()
    event = json.loads(lines[2])
    event["actor"] = "mallory"
    edited = "\n".join([lines[0], lines[1], json.dumps(event), *lines[3:]]) + "\n"
    result.path.write_text(edited)
    with sessions() as db, pytest.raises(ArchiveError, match="hash mismatch"):
        verify_archive(result.path, db=db)
    # a file whose lines are removed (and header fixed) no longer matches its checkpoint
    header = json.loads(lines[0])
    header.update(last_seq=header["last_seq"] - 1, count=header["count"] - 1)
    header["last_hash"] = json.loads(lines[-2])["hash"]
    result.path.write_text("\n".join([json.dumps(header), *lines[1:-1]]) + "\n")
    with sessions() as db:
        verify_file(result.path, keyring=keys.keyring_for(db))
        with pytest.raises(ArchiveError, match=r"no audit\.archive checkpoint"):
            verify_archive(result.path, db=db)


def test_removing_archived_events_without_a_checkpoint_is_detected(app):
    sessions = app.state.clearscan.sessions
    _add(sessions, 4)
    with sessions() as db:
        db.execute(text("DROP TRIGGER audit_events_no_delete"))
        db.execute(text("DELETE FROM audit_events WHERE seq <= 2"))
        db.commit()
        report = audit.verify_chain(db=db)
    assert not report.ok and "start" in (report.reason or "")


def test_cli_verify_anchor_export_archive(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("CLEARSCAN_ADMIN_PASSWORD", "admin-password-123")
    runner = CliRunner()
    data = ["--data-dir", str(settings.data_dir)]
    r = runner.invoke(cli, ["audit", "verify", *data])
    assert r.exit_code == 0, r.output
    assert "audit chain ok" in r.output
    r = runner.invoke(cli, ["audit", "anchor", *data])
    assert r.exit_code == 0 and "anchored event" in r.output, r.output
    out = tmp_path / "export.csv"
    r = runner.invoke(cli, ["audit", "export", "--format", "csv", "--out", str(out), *data])
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith(",".join(FIELDS))
    r = runner.invoke(cli, ["audit", "export", "--since", "last tuesday", *data])
    assert r.exit_code == 2 and "--since" in r.output
    r = runner.invoke(cli, ["audit", "archive", "--older-than", "0", *data])
    assert r.exit_code == 0 and "archived events 1-" in r.output, r.output
    archived = sorted((settings.data_dir / "audit-archive").glob("audit-*.jsonl"))
    r = runner.invoke(cli, ["audit", "verify-archive", str(archived[0]), *data])
    assert r.exit_code == 0 and "archive ok" in r.output, r.output
    r = runner.invoke(cli, ["audit", "verify", *data])
    assert r.exit_code == 0, r.output
    (settings.data_dir / "audit-anchors.log").unlink()
    r = runner.invoke(cli, ["audit", "verify", *data])
    assert r.exit_code == 1 and "missing" in r.output


def test_the_periodic_check_archives_past_the_retention_period(app, settings):
    """CLEARSCAN_AUDIT_RETENTION_DAYS: the audit check (as the server runs it) verifies, anchors
    and archives what is older; nothing is dropped that the archive does not hold."""
    from clearscan.audit import upkeep

    sessions = app.state.clearscan.sessions
    _add(sessions, 4)
    keep = settings.model_copy(update={"audit_retention_days": 30})
    verdicts: list[bool] = []
    with sessions() as db:
        before = db.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
    report = upkeep.check(
        sessions=sessions, settings=keep, on_verified=lambda r: verdicts.append(r.ok)
    )
    assert report.ok and verdicts == [True]
    assert not (settings.data_dir / "audit-archive").exists()  # nothing is 30 days old yet

    later = datetime.now(UTC) + timedelta(days=31)
    report = upkeep.check(
        sessions=sessions, settings=keep, on_verified=lambda r: verdicts.append(r.ok), now=later
    )
    assert report.ok
    (archived,) = (settings.data_dir / "audit-archive").iterdir()
    with sessions() as db:
        live = db.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars().all()
        assert [e.action for e in live][-1] == "audit.archive"
        checkpoint = live[-1].details
        assert checkpoint["count"] >= before  # every event then, the check's own anchor too
        assert verify_archive(archived, db=db).count == checkpoint["count"]
        assert audit.verify_chain(db=db).ok
