"""The audit trail is append-only and hash-chained: edits and deletions are detected."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from clearscan.audit import service as audit
from tests.conftest import ADMIN_PASSWORD, png_bytes


def _db(app):
    return app.state.clearscan.sessions()


def test_actions_are_audited_with_context(client, admin_headers, clinician_headers):
    r = client.post(
        "/api/v1/predict",
        headers={**clinician_headers, "X-Request-ID": "req-abc"},
        files=[("file", ("x.png", png_bytes(), "image/png"))],
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "req-abc"
    events = client.get("/api/v1/audit?limit=200", headers=admin_headers).json()["items"]
    actions = {e["action"] for e in events}
    assert {
        "auth.login",
        "user.create",
        "case.create",
        "image.upload",
        "prediction.create",
    } <= actions
    pred = next(e for e in events if e["action"] == "prediction.create")
    assert pred["request_id"] == "req-abc" and pred["actor"].startswith("clinician")
    assert pred["client_addr"] and pred["at"].endswith(("Z", "+00:00"))


def test_failed_login_is_audited_and_rate_limited(client, admin_headers, settings):
    # admin signed in from this address (admin_headers): guesses from it back off, yet the
    # right password from it is still let in
    wrong = {"username": "admin", "password": "wrong-password"}
    for _ in range(settings.login_max_failures):
        assert client.post("/api/v1/auth/token", data=wrong).status_code == 401
    r = client.post("/api/v1/auth/token", data=wrong)  # checked (a known address), and counted
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    right = {"username": "admin", "password": ADMIN_PASSWORD}
    assert client.post("/api/v1/auth/token", data=right).status_code == 200
    ghost = {"username": "patient 0815 smith", "password": "wrong-password"}
    assert client.post("/api/v1/auth/token", data=ghost).status_code == 401
    events = client.get("/api/v1/audit?action=auth.login&limit=100", headers=admin_headers).json()
    outcomes = [e["outcome"] for e in events["items"]]
    assert outcomes.count("failure") == settings.login_max_failures + 1
    assert outcomes.count("throttled") == 1
    assert "0815" not in json.dumps(events)  # typed usernames are never recorded as typed
    assert events["items"][0]["actor"] == "unknown user"


def test_chain_verifies_and_detects_tampering(app, client, admin_headers):
    client.get("/api/v1/users", headers=admin_headers)
    with _db(app) as db:
        assert audit.verify_chain(db=db).ok
    v = client.get("/api/v1/audit/verify", headers=admin_headers).json()
    assert v["ok"] and v["checked"] >= 2
    # The database refuses updates and deletes of audit rows outright ...
    with _db(app) as db, pytest.raises(DatabaseError):
        db.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    with _db(app) as db, pytest.raises(DatabaseError):
        db.execute(text("DELETE FROM audit_events WHERE seq = 1"))
    # ... and when someone bypasses that (drops the trigger), the chain shows the edit.
    with _db(app) as db:
        db.execute(text("DROP TRIGGER audit_events_no_update"))
        db.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
        db.commit()
        report = audit.verify_chain(db=db)
    assert not report.ok and report.first_bad_seq == 1


def test_deleted_tail_event_is_detected(app, client, admin_headers):
    client.get("/api/v1/users", headers=admin_headers)
    with _db(app) as db:
        db.execute(text("DROP TRIGGER audit_events_no_delete"))
        last = db.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
        db.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": last})
        db.commit()
        report = audit.verify_chain(db=db)
    assert not report.ok


def test_concurrent_appends_keep_one_chain(app):
    def worker(n: int) -> None:
        for i in range(10):
            with _db(app) as db:
                audit.record(
                    audit.Entry(f"test.{i}"), db=db, ctx=audit.RequestContext(actor=f"t{n}")
                )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with _db(app) as db:
        report = audit.verify_chain(db=db)
        assert report.ok and report.checked >= 40


def test_audit_is_admin_only(client, clinician_headers):
    assert client.get("/api/v1/audit", headers=clinician_headers).status_code == 403


def test_events_appended_during_a_verification_are_not_a_break(app, monkeypatch):
    """Another process appends while the chain is being checked: the check covers the chain up
    to the head it read first and reports it whole (a report of "events missing at the end"
    here would fire the audit alert for nothing)."""
    sessions = app.state.clearscan.sessions
    with sessions() as db:
        audit.record(audit.Entry("test.seed"), db=db, ctx=audit.RequestContext(actor="t"))
    real_execute = None
    appended = []

    def append_others() -> None:
        with sessions() as other:
            for i in range(3):
                audit.record(
                    audit.Entry("test.concurrent", details={"i": i}),
                    db=other,
                    ctx=audit.RequestContext(actor="other"),
                )
        appended.append(3)

    with sessions() as db:
        real_execute = db.execute

        def execute(*args, **kwargs):
            result = real_execute(*args, **kwargs)
            if not appended:  # right after the check's first read
                append_others()
            return result

        monkeypatch.setattr(db, "execute", execute)
        report = audit.verify_chain(db=db)
    assert appended == [3]
    assert report.ok, report
    with sessions() as db:
        full = audit.verify_chain(db=db)
    assert full.ok and full.checked == report.checked + 3
