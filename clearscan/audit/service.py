"""Append-only, hash-chained audit trail.

Each event's hash is sha256(prev_hash || canonical JSON of the event). The chain head row is
locked while appending, so concurrent writers (threads or processes) never fork the chain. Events
are committed in the same transaction as the change they describe."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, func, insert, select, update
from sqlalchemy.orm import Session

from clearscan.audit.actions import Action
from clearscan.audit.models import AuditEvent, AuditHead

GENESIS = "0" * 64


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


def _digest(prev_hash: str, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


_PAYLOAD_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "object_type",
    "object_id",
    "outcome",
    "client_addr",
    "request_id",
    "details",
)


_EVENTS = cast(Table, AuditEvent.__table__)


def _payload_of(row: dict[str, Any]) -> dict[str, Any]:
    """What an event's hash covers (the same for a stored row and one about to be written)."""
    out = {k: row[k] for k in _PAYLOAD_FIELDS}
    out["at"] = row["at"].astimezone(UTC).isoformat()
    return out


def _payload(ev: AuditEvent) -> dict[str, Any]:
    return _payload_of({k: getattr(ev, k) for k in _PAYLOAD_FIELDS})


def append(*entries: Entry, db: Session, ctx: RequestContext) -> list[AuditEvent]:
    """Add `entries` to the chain inside the session's current transaction (caller commits).
    The rows go out as one multi-row INSERT; the returned events are not attached to `db`."""
    # Lock the head row and read it in one statement (UPDATE ... RETURNING: SQLite >= 3.35 and
    # PostgreSQL); the lock is held until the caller's commit.
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
            "prev_hash": prev,
        }
        row["hash"] = prev = _digest(prev, _payload_of(row))
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


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(*, db: Session, batch: int = 5000) -> ChainReport:
    """Recompute every hash in order; report the first break (edit, deletion or reorder).

    The head is read first and the chain checked up to it: an event appended meanwhile (by
    another process, another request) lies beyond that head and is left for the next check,
    never mistaken for a break. Appends write the event and the head in one transaction, so
    every event up to a head that can be read is there."""
    head = db.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    upto = head.seq if head is not None else None
    prev, expected_seq, checked, last_id = GENESIS, 1, 0, -1
    while True:
        q = select(AuditEvent).where(AuditEvent.seq > last_id)
        if upto is not None:
            q = q.where(AuditEvent.seq <= upto)
        rows = db.execute(q.order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected_seq:
                return ChainReport(False, checked, expected_seq, "missing event")
            if ev.prev_hash != prev or _digest(prev, _payload(ev)) != ev.hash:
                return ChainReport(False, checked, ev.seq, "hash mismatch")
            prev, expected_seq, checked, last_id = ev.hash, expected_seq + 1, checked + 1, ev.seq
    if head is not None and (head.seq != checked or head.hash != prev):
        return ChainReport(False, checked, checked + 1, "events missing at the end of the chain")
    return ChainReport(True, checked)
