"""Append-only, keyed hash-chained audit trail: appending, listing, verifying, anchoring.

Each event's hash is an HMAC (under the audit key, kept outside the database) of the previous
hash and the canonical JSON of the event (chain.py). The chain head row is locked while
appending, so concurrent writers (threads or processes) never fork the chain. Events are
committed in the same transaction as the change they describe. Verification also compares the
chain with its anchors outside the database (anchors.py), so a deleted tail is detected."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, Table, func, insert, select, update
from sqlalchemy.orm import Session

from clearscan.audit import anchors, keys
from clearscan.audit.actions import Action
from clearscan.audit.anchors import Anchor, AnchorConfig, AnchorError
from clearscan.audit.chain import (
    GENESIS,
    ChainReport,
    ChainState,
    check_chain,
    check_since,
    keyed_digest,
)
from clearscan.audit.models import AuditEvent, AuditHead

if TYPE_CHECKING:
    from clearscan.config import Settings

__all__ = [
    "GENESIS",
    "ChainReport",
    "Entry",
    "RequestContext",
    "anchor_now",
    "append",
    "install",
    "list_events",
    "record",
    "seal",
    "verify_chain",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestContext:
    """Who is asking and from where; passed from the HTTP layer or the CLI."""

    actor: str | None = None
    client_addr: str | None = None
    request_id: str | None = None


@dataclass
class Entry:
    """One event to append. ``action`` is an :class:`Action`; it is stored as its string value."""

    action: Action
    outcome: str = "success"
    object_type: str | None = None
    object_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    actor: str | None = None  # overrides the context's actor (e.g. a failed login's username)


_EVENTS = cast(Table, AuditEvent.__table__)


def append(*entries: Entry, db: Session, ctx: RequestContext) -> list[AuditEvent]:
    """Add `entries` to the chain inside the session's current transaction (caller commits).
    The rows go out as one multi-row INSERT; the returned events are not attached to `db`."""
    # Lock the head row and read it in one statement (UPDATE ... RETURNING: SQLite >= 3.35 and
    # PostgreSQL); the lock is held until the caller's commit.
    keyring = keys.keyring_for(db)
    key_id = keyring.current.key_id
    prev, seq = db.execute(
        update(AuditHead)
        .where(AuditHead.id == 1)
        .values(seq=AuditHead.seq)
        .returning(AuditHead.hash, AuditHead.seq)
    ).one()
    first = seq
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for e in entries:
        seq += 1
        row: dict[str, Any] = {
            "seq": seq,
            "at": now,
            "actor": e.actor if e.actor is not None else ctx.actor,
            "action": str(e.action),
            "object_type": e.object_type,
            "object_id": e.object_id,
            "outcome": e.outcome,
            "client_addr": ctx.client_addr,
            "request_id": ctx.request_id,
            "details": dict(e.details),
            "key_id": key_id,
            "prev_hash": prev,
        }
        row["hash"] = prev = keyed_digest(keyring, key_id, prev, row)
        rows.append(row)
    if rows:
        db.execute(insert(_EVENTS), rows)  # Core: no ORM unit of work for append-only rows
    moved = db.execute(
        update(AuditHead)
        .where(AuditHead.id == 1, AuditHead.seq == first)
        .values(seq=seq, hash=prev)
        .execution_options(synchronize_session=False)
    )
    if cast(CursorResult[Any], moved).rowcount != 1:  # the head is locked: cannot happen
        raise RuntimeError("audit chain head moved while it was locked")
    db.flush()  # the caller's pending rows, in the same transaction
    return [AuditEvent(**row) for row in rows]


def record(*entries: Entry, db: Session, ctx: RequestContext) -> list[AuditEvent]:
    """Append and commit at once (for events that stand alone: denials, failed logins)."""
    events = append(*entries, db=db, ctx=ctx)
    db.commit()
    return events


def list_events(
    *,
    db: Session,
    limit: int = 50,
    offset: int = 0,
    actor: str | None = None,
    action: str | None = None,
) -> tuple[Sequence[AuditEvent], int]:
    q = select(AuditEvent)
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if action:
        q = q.where(AuditEvent.action == action)
    total = db.execute(select(func.count()).select_from(q.subquery())).scalar_one()
    rows = db.execute(q.order_by(AuditEvent.seq.desc()).limit(limit).offset(offset)).scalars()
    return rows.all(), total


# --- set-up, verification and anchors ------------------------------------------------------


def install(settings: Settings) -> None:
    """Register the audit key and the anchor sinks the settings name for their database (the
    app, the CLI and the worker call this at start-up, through bootstrap)."""
    keys.install(settings)
    anchors.register(settings.sqlalchemy_url, AnchorConfig.from_settings(settings))


def seal(*, db: Session, ctx: RequestContext) -> AuditEvent | None:
    """When the newest event is not signed with the current key (events from before the chain
    was keyed, or a key rotation), append a checkpoint signed with it: it covers the last hash
    of the earlier events, so they can no longer be rewritten. Commits; None when not needed."""
    keyring = keys.keyring_for(db)
    head = db.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    if head.seq == 0:
        return None
    last = db.execute(select(AuditEvent.key_id).where(AuditEvent.seq == head.seq)).first()
    if last is not None and last.key_id == keyring.current.key_id:
        return None
    previous = last.key_id if last is not None else None
    entry = Entry(
        Action.AUDIT_KEY_CHECKPOINT,
        object_type="audit",
        details={"previous_key_id": previous or "sha256", "through_seq": head.seq},
    )
    return record(entry, db=db, ctx=ctx)[0]


@dataclass(frozen=True)
class _Anchors:
    found: list[tuple[str, Anchor]]
    problem: str | None = None
    file_missing: bool = False


def _read_anchors(db: Session, config: AnchorConfig | None) -> _Anchors:
    if config is None:
        return _Anchors([])
    keyring = keys.keyring_for(db)
    found: list[tuple[str, Anchor]] = []
    missing = False
    try:
        latest = anchors.read_file(keyring, config.file)
        if latest is not None:
            found.append(("anchor file", latest))
    except FileNotFoundError:
        missing = True
    except (AnchorError, OSError) as exc:
        return _Anchors(found, f"anchor file {config.file}: {exc}")
    if config.s3 is not None:
        try:
            s3_latest = anchors.latest_s3(config.s3, keyring)
        except AnchorError as exc:
            return _Anchors(found, str(exc))
        except Exception as exc:  # the store is unreachable: no verdict is a failed check
            return _Anchors(found, f"S3 anchors cannot be read: {type(exc).__name__}")
        if s3_latest is not None:
            found.append(("S3 anchor", s3_latest))
    return _Anchors(found, None, missing)


def verify_chain(*, db: Session, batch: int = 5000, compare_anchors: bool = True) -> ChainReport:
    """Check the chain and compare it with its anchors (see `_verify`). `compare_anchors=False`
    checks the chain alone: a restore's check, whose backup is older than the anchors written
    since by design (the audit check compares them once the server runs)."""
    return _verify(db, batch, compare_anchors=compare_anchors)[0]


def _verify(
    db: Session, batch: int = 5000, *, compare_anchors: bool = True
) -> tuple[ChainReport, bool]:
    """(the report, whether its only fault is a missing anchor file).

    Check the chain (every HMAC, no gap, no unkeyed event after keyed ones, the start covered
    by an archive checkpoint) and compare it with its anchors outside the database: a head
    behind an anchor, or an event that differs from its anchor, is a rewritten tail.

    The anchors are read before the head: one written meanwhile names a head the check sees."""
    keyring = keys.keyring_for(db)
    config = anchors.config_for(db) if compare_anchors else None
    found = _read_anchors(db, config)
    st = ChainState()
    want = frozenset(a.seq for _, a in found.found)
    report = check_chain(db=db, keyring=keyring, batch=batch, want=want, state=st)
    if not report.ok:
        return report, False
    checked = report.checked
    if found.problem:
        return ChainReport(False, checked, None, found.problem), False
    started = st.last_anchor_event or {}
    if config is not None and found.file_missing and started.get("file") == str(config.file):
        since = started.get("seq")
        reason = f"the anchor file {config.file} is missing (anchored since event {since})"
        return ChainReport(False, checked, None, reason), True
    for what, anchor in found.found:
        if anchor.seq > st.head_seq:
            reason = (
                f"the chain ends at event {st.head_seq} but the {what} names event {anchor.seq}: "
                "events after it were removed"
            )
            return ChainReport(False, checked, st.head_seq + 1, reason), False
        if anchor.seq == 0 or (st.first_seq is not None and anchor.seq < st.first_seq):
            continue  # before the first event, or archived (the checkpoint covers it)
        if st.hashes.get(anchor.seq) != anchor.hash:
            reason = f"event {anchor.seq} differs from the {what}"
            return ChainReport(False, checked, anchor.seq, reason), False
    return report, False


def anchor_now(*, db: Session, ctx: RequestContext, start: bool = False) -> Anchor:
    """Verify the chain, then write its head to every configured anchor sink.

    A chain that fails verification is not anchored (that would bless the damage): AnchorError.
    The first anchor to a file (`start`, or the file never written before) records an
    ``audit.anchor`` event, after which the file must exist. A file that went missing is not
    started again unless `start` says so (an administrator's decision, audited)."""
    config = anchors.config_for(db)
    if config is None:
        raise AnchorError("no anchor sinks are configured for this database")
    keyring = keys.keyring_for(db)
    report, only_file_missing = _verify(db)
    if not report.ok and not (start and only_file_missing):
        raise AnchorError(f"the audit chain does not verify ({report.reason}); not anchored")
    if start or not config.file.exists():
        record(
            Entry(
                Action.AUDIT_ANCHOR,
                object_type="audit",
                details={"file": str(config.file), "started": True, "seq": _head(db)[0] + 1},
            ),
            db=db,
            ctx=ctx,
        )
    seq, hash_ = _head(db)
    anchor = anchors.make_anchor(keyring, seq, hash_)
    line = anchors.line_of(keyring, anchor)
    anchors.append_if_newer(config.file, keyring, anchor, line)
    if config.syslog:
        anchors.send_syslog(line, config.syslog_address)
    if config.s3 is not None:
        anchors.put_s3(config.s3, keyring, anchor)
    db.rollback()  # end the read transaction
    return anchor


def anchor_head(*, db: Session) -> Anchor | None:
    """Anchor the head to the file (and syslog) when it moved since the file's latest anchor,
    after checking only the events appended since then (:func:`chain.check_since`): cheap, so
    the server runs it every CLEARSCAN_AUDIT_ANCHOR_INTERVAL_SECONDS and a deleted tail is
    detected for all events older than that interval. The whole chain's verification and the
    S3 anchor stay with :func:`anchor_now` (the periodic audit check).

    None when there is nothing to anchor (no anchor file yet: the audit check starts it; the
    head has not moved). AnchorError when the events since the anchor do not check out: they
    are not anchored, and the audit check reports the break."""
    config = anchors.config_for(db)
    if config is None or not config.file.exists():
        return None
    keyring = keys.keyring_for(db)
    latest = anchors.read_file(keyring, config.file)
    if latest is None:
        return None
    checked = check_since(db=db, keyring=keyring, after_seq=latest.seq, after_hash=latest.hash)
    db.rollback()  # end the read transaction
    if isinstance(checked, str):
        raise AnchorError(f"the audit events since the last anchor do not verify: {checked}")
    seq, hash_ = checked
    if seq == latest.seq:
        return None
    anchor = anchors.make_anchor(keyring, seq, hash_)
    line = anchors.line_of(keyring, anchor)
    if anchors.append_if_newer(config.file, keyring, anchor, line) and config.syslog:
        anchors.send_syslog(line, config.syslog_address)
    return anchor


def _head(db: Session) -> tuple[int, str]:
    head = db.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).one()
    return int(head.seq), str(head.hash)


def case_list_entry(
    filters: Mapping[str, object], *, patient_key: bool, offset: int, rows: int, total: int
) -> Entry:
    """The event of a case list read (API or web page): the filters given and how many rows
    came back, never the rows. A patient-key filter is recorded as present, not its value."""
    given = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in filters.items()}
    details: dict[str, Any] = {k: v for k, v in given.items() if v not in (None, "")}
    if patient_key:
        details["patient_key"] = "given"
    return Entry(
        Action.CASE_LIST,
        object_type="case",
        details={"filters": details, "offset": offset, "returned": rows, "total": total},
    )
