"""Someone with write access to the database (but not the audit key) tampers with the trail in
each way we know of; every one is detected. Also: events from before the chain was keyed still
verify, key rotation, TRUNCATE refused on PostgreSQL, anchors outside the database."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from clearscan.audit import anchors, keys
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.audit.chain import GENESIS, PAYLOAD_FIELDS
from clearscan.config import ConfigError, Settings
from tests.conftest import pg_available, pg_database

CTX = audit.RequestContext(actor="tester", client_addr="127.0.0.1")


@pytest.fixture
def sessions(app):
    return app.state.clearscan.sessions


def _add(sessions, n: int = 5) -> None:
    with sessions() as db:
        audit.record(
            *[
                audit.Entry(Action.CASE_VIEW, object_type="case", object_id=str(i))
                for i in range(n)
            ],
            db=db,
            ctx=CTX,
        )


def _verify(sessions) -> audit.ChainReport:
    with sessions() as db:
        return audit.verify_chain(db=db)


def _unprotect(db) -> None:
    """What an attacker with database access does first (SQLite triggers)."""
    db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_update"))
    db.execute(text("DROP TRIGGER IF EXISTS audit_events_no_delete"))


def _plain_rechain(db, *, drop_key: bool) -> None:
    """Recompute every hash as plain sha256 (the pre-keyed scheme) and move the head."""
    rows = db.execute(text("SELECT * FROM audit_events ORDER BY seq")).mappings().all()
    prev = GENESIS
    for r in rows:
        payload = {k: r[k] for k in PAYLOAD_FIELDS}
        payload["details"] = (
            json.loads(r["details"]) if isinstance(r["details"], str) else r["details"]
        )
        at = r["at"]
        if isinstance(at, str):
            from datetime import datetime

            at = datetime.fromisoformat(at)
        payload["at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
        if not drop_key and r["key_id"] is not None:
            payload["key_id"] = r["key_id"]
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        h = hashlib.sha256((prev + body).encode()).hexdigest()
        db.execute(
            text(
                "UPDATE audit_events SET prev_hash = :p, hash = :h"
                + (", key_id = NULL" if drop_key else "")
                + " WHERE seq = :s"
            ),
            {"p": prev, "h": h, "s": r["seq"]},
        )
        prev = h
    db.execute(text("UPDATE audit_head SET hash = :h WHERE id = 1"), {"h": prev})


def _delete_tail(sessions, cut: int) -> None:
    """Delete the events after `cut` and rewind the head to it, as an attacker would."""
    with sessions() as db:
        _unprotect(db)
        db.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": cut})
        last = db.execute(text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": cut})
        db.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"),
            {"s": cut, "h": last.scalar_one()},
        )
        db.commit()


def test_a_fresh_chain_is_keyed_anchored_and_verifies(app, sessions, settings):
    _add(sessions)
    assert _verify(sessions).ok
    with sessions() as db:
        key_ids = db.execute(text("SELECT DISTINCT key_id FROM audit_events")).scalars().all()
    assert key_ids == [keys.from_settings(settings).current.key_id]
    key_file = settings.data_dir / "audit_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    anchor_file = settings.data_dir / "audit-anchors.log"
    assert stat.S_IMODE(anchor_file.stat().st_mode) == 0o600
    assert len(anchor_file.read_text().splitlines()) == 1  # written at start-up


def test_edited_detail_is_detected(app, sessions):
    _add(sessions)
    with sessions() as db:
        _unprotect(db)
        db.execute(text("""UPDATE audit_events SET details = '{"x": 1}' WHERE seq = 3"""))
        db.commit()
    report = _verify(sessions)
    assert not report.ok and report.first_bad_seq == 3


@pytest.mark.parametrize("drop_key", [False, True])
def test_edit_with_recomputed_plain_chain_and_head_is_detected(app, sessions, drop_key):
    """The attack the plain sha256 chain could not see: edit, recompute every hash, move the
    head. Without the key the HMACs cannot be made; downgrading every event to the unkeyed
    scheme leaves a chain that was never sealed."""
    _add(sessions)
    with sessions() as db:
        _unprotect(db)
        db.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
        _plain_rechain(db, drop_key=drop_key)
        db.commit()
    report = _verify(sessions)
    assert not report.ok
    if drop_key:
        assert "never sealed" in (report.reason or "")


def test_deleted_tail_with_rewound_head_is_detected_by_the_anchor(app, sessions):
    _add(sessions)
    with sessions() as db:
        anchor = audit.anchor_now(db=db, ctx=CTX)
    _add(sessions, 3)
    assert _verify(sessions).ok
    cut = anchor.seq - 2
    _delete_tail(sessions, cut)
    report = _verify(sessions)
    assert not report.ok
    assert f"names event {anchor.seq}" in (report.reason or "")
    # and no later anchor blesses the shorter chain
    with sessions() as db, pytest.raises(anchors.AnchorError):
        audit.anchor_now(db=db, ctx=CTX)


def test_tampered_anchor_line_is_detected(app, sessions, settings):
    _add(sessions)
    with sessions() as db:
        audit.anchor_now(db=db, ctx=CTX)
    path = settings.data_dir / "audit-anchors.log"
    lines = path.read_text().splitlines()
    forged = json.loads(lines[-1])
    forged["seq"] -= 1  # make the anchor name an earlier head
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    report = _verify(sessions)
    assert not report.ok and "MAC" in (report.reason or "")


def test_missing_anchor_file_is_detected_and_not_silently_replaced(app, sessions, settings):
    _add(sessions)
    path = settings.data_dir / "audit-anchors.log"
    path.unlink()
    report = _verify(sessions)
    assert not report.ok and "missing" in (report.reason or "")
    with sessions() as db, pytest.raises(anchors.AnchorError):
        audit.anchor_now(db=db, ctx=CTX)  # the periodic check does not start it again
    assert not path.exists()
    with sessions() as db:  # an administrator starts a new file, which the trail records
        audit.anchor_now(db=db, ctx=CTX, start=True)
    assert _verify(sessions).ok


def test_anchors_never_go_back_and_lines_are_appended(tmp_path):
    ring = keys.Keyring.of("k" * 40)
    path = tmp_path / "a.log"
    a5 = anchors.make_anchor(ring, 5, "a" * 64)
    a3 = anchors.make_anchor(ring, 3, "b" * 64)
    assert anchors.append_if_newer(path, ring, a5, anchors.line_of(ring, a5))
    assert not anchors.append_if_newer(path, ring, a3, anchors.line_of(ring, a3))
    assert anchors.read_file(ring, path) == a5
    with path.open("a") as f:  # someone appends an older head by hand
        f.write(anchors.line_of(ring, a3) + "\n")
    with pytest.raises(anchors.AnchorError, match="went back"):
        anchors.read_file(ring, path)
    with pytest.raises(anchors.AnchorError, match="unknown audit key"):
        anchors.read_file(keys.Keyring.of("z" * 40), path)


# --- events from before the chain was keyed, and key rotation ------------------------------


def _legacy_events(db, n: int) -> None:
    """Write `n` events as the code before the keyed chain did (plain sha256)."""
    from datetime import datetime

    prev, seq = db.execute(text("SELECT hash, seq FROM audit_head WHERE id = 1")).one()
    for _ in range(n):
        seq += 1
        row = {
            "seq": seq,
            "at": datetime.now(UTC),
            "actor": "old",
            "action": "case.view",
            "object_type": None,
            "object_id": None,
            "outcome": "success",
            "client_addr": None,
            "request_id": None,
            "details": {"n": seq},
        }
        payload = dict(row, at=row["at"].isoformat())
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        h = hashlib.sha256((prev + body).encode()).hexdigest()
        db.execute(
            text(
                "INSERT INTO audit_events (seq, at, actor, action, outcome, details, prev_hash, "
                "hash) VALUES (:seq, :at, :actor, :action, :outcome, :details, :prev, :hash)"
            ),
            dict(row, details=json.dumps(row["details"]), prev=prev, hash=h),
        )
        prev = h
    db.execute(
        text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": seq, "h": prev}
    )


def test_events_from_before_the_keyed_chain_still_verify(db):
    _legacy_events(db, 4)
    report = audit.verify_chain(db=db)
    assert not report.ok and "never sealed" in (report.reason or "")  # not yet sealed
    checkpoint = audit.seal(db=db, ctx=CTX)
    assert checkpoint is not None and checkpoint.details["previous_key_id"] == "sha256"
    audit.record(audit.Entry(Action.CASE_VIEW), db=db, ctx=CTX)
    assert audit.verify_chain(db=db).ok
    assert audit.seal(db=db, ctx=CTX) is None  # already under the current key
    # an edited plain event, its plain chain recomputed, breaks at the checkpoint's link
    db.execute(text("DROP TRIGGER audit_events_no_update"))
    db.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    _plain_rechain_legacy_prefix(db, upto=4)
    report = audit.verify_chain(db=db)
    assert not report.ok and report.first_bad_seq == 5


def _plain_rechain_legacy_prefix(db, *, upto: int) -> None:
    rows = db.execute(
        text("SELECT * FROM audit_events WHERE seq <= :u ORDER BY seq"), {"u": upto}
    ).mappings()
    prev = GENESIS
    for r in rows.all():
        payload = {k: r[k] for k in PAYLOAD_FIELDS}
        payload["details"] = (
            json.loads(r["details"]) if isinstance(r["details"], str) else r["details"]
        )
        from datetime import datetime

        at = datetime.fromisoformat(r["at"]) if isinstance(r["at"], str) else r["at"]
        payload["at"] = at.replace(tzinfo=UTC).isoformat() if not at.tzinfo else at.isoformat()
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        prev_new = hashlib.sha256((prev + body).encode()).hexdigest()
        db.execute(
            text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
            {"p": prev, "h": prev_new, "s": r["seq"]},
        )
        prev = prev_new


def test_key_rotation_keeps_old_events_verifiable(db, migrated_engine):
    old = keys.Keyring.of("old-audit-key-" + "1" * 32)
    new_only = keys.Keyring.of("new-audit-key-" + "2" * 32)
    rotated = keys.Keyring.of("new-audit-key-" + "2" * 32, ["old-audit-key-" + "1" * 32])
    try:
        keys.register(migrated_engine, old)
        audit.record(audit.Entry(Action.CASE_VIEW), db=db, ctx=CTX)
        keys.register(migrated_engine, rotated)
        checkpoint = audit.seal(db=db, ctx=CTX)
        assert checkpoint is not None
        assert checkpoint.details["previous_key_id"] == old.current.key_id
        assert checkpoint.key_id == rotated.current.key_id
        assert audit.verify_chain(db=db).ok
        keys.register(migrated_engine, new_only)  # the old key forgotten
        report = audit.verify_chain(db=db)
        assert not report.ok and "unknown audit key" in (report.reason or "")
    finally:
        keys._by_url.pop(migrated_engine.url.render_as_string(hide_password=True), None)


def test_production_requires_an_audit_key(tmp_path):
    base = {
        "environment": "production",
        "data_dir": tmp_path,
        "secret_key": "s" * 40,
        "pseudonym_key": "p" * 40,
    }
    with pytest.raises(ConfigError, match="CLEARSCAN_AUDIT_KEY"):
        Settings(**base).check_production()
    with pytest.raises(ConfigError, match="CLEARSCAN_AUDIT_KEY"):
        Settings(**base, audit_key="changeme").check_production()
    Settings(**base, audit_key="a" * 32).check_production()
    assert not (tmp_path / "audit_key").exists()
    with pytest.raises(ConfigError, match="CLEARSCAN_AUDIT_KEY"):
        _ = Settings(data_dir=tmp_path, audit_key="short").resolved_audit_key


def test_an_unregistered_database_without_default_has_no_key(db):
    keys.set_default(None)
    try:
        with pytest.raises(keys.AuditKeyMissing):
            audit.record(audit.Entry(Action.CASE_VIEW), db=db, ctx=CTX)
    finally:
        keys.set_default(keys.Keyring.of("test-audit-key-for-unregistered-databases-0123"))


# --- PostgreSQL: TRUNCATE is refused -------------------------------------------------------


@pytest.fixture
def pg_app(settings, model_cache) -> Iterator[object]:
    if not pg_available():
        pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432 (the test machine runs it)")
    from clearscan.app import create_app

    with pg_database(settings) as pg:
        app = create_app(pg, model_cache=model_cache)
        try:
            yield app
        finally:
            app.state.clearscan.engine.dispose()


def test_truncate_is_refused_on_postgresql(pg_app):
    sessions = pg_app.state.clearscan.sessions
    _add(sessions)
    for table in ("audit_events", "audit_head"):
        with sessions() as db, pytest.raises(DBAPIError, match="cannot be truncated"):
            db.execute(text(f"TRUNCATE {table}"))
    with sessions() as db, pytest.raises(DBAPIError, match="append-only"):
        db.execute(text("DELETE FROM audit_events"))
    with sessions() as db, pytest.raises(DBAPIError):
        db.execute(text("DELETE FROM audit_head"))
    assert _verify(sessions).ok
    # the superuser who drops the triggers and truncates is caught by the anchor
    with sessions() as db:
        db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        db.execute(text("TRUNCATE audit_events"))
        db.execute(text("UPDATE audit_head SET seq = 0, hash = :g"), {"g": GENESIS})
        db.commit()
    report = _verify(sessions)
    assert not report.ok and "removed" in (report.reason or "")


def test_edit_detected_on_postgresql(pg_app):
    sessions = pg_app.state.clearscan.sessions
    _add(sessions)
    with sessions() as db:
        db.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        db.execute(text("""UPDATE audit_events SET details = '{"x": 1}' WHERE seq = 2"""))
        db.commit()
    report = _verify(sessions)
    assert not report.ok and report.first_bad_seq == 2


def test_key_file_is_created_private(tmp_path):
    s = Settings(data_dir=tmp_path)
    key = s.resolved_audit_key
    assert len(key) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "audit_key").st_mode) == 0o600
    assert Settings(data_dir=tmp_path).resolved_audit_key == key


def test_archiving_is_the_one_delete_path_on_postgresql(pg_app):
    from datetime import datetime, timedelta

    from clearscan.audit.archive import archive_older_than, verify_archive

    state = pg_app.state.clearscan
    _add(state.sessions, 4)
    with state.sessions() as db, pytest.raises(DBAPIError, match="append-only"):
        db.execute(text("DELETE FROM audit_events WHERE seq = 1"))
    with state.sessions() as db:
        later = datetime.now(UTC) + timedelta(days=30)
        result = archive_older_than(db=db, settings=state.settings, days=1, ctx=CTX, now=later)
    assert result is not None and result.first_seq == 1
    with state.sessions() as db:
        assert audit.verify_chain(db=db).ok
        assert verify_archive(result.path, db=db) == result
        left = db.execute(text("SELECT min(seq) FROM audit_events")).scalar_one()
        assert left == result.last_seq + 1
