"""Audit export in the terms of DICOM PS3.15 A.5.3 (after RFC 3881): who (UserID), what
(EventID, EventActionCode), when (EventDateTime), where from (NetworkAccessPointID), which object
(ParticipantObjectTypeCode / ID) and the outcome (EventOutcomeIndicator), as CSV or JSON, read in
batches so any size streams."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from clearscan.audit.models import AuditEvent

FIELDS = (
    "seq",
    "event_date_time",
    "event_id",
    "event_action_code",
    "event_outcome_indicator",
    "outcome",
    "user_id",
    "network_access_point_id",
    "participant_object_type",
    "participant_object_id",
    "request_id",
    "details",
    "key_id",
    "hash",
)

# EventActionCode: Create, Read, Update, Delete, Execute (PS3.15 A.5.3.1, RFC 3881 5.1.2)
_ACTION_CODES = {
    "create": "C",
    "import": "C",
    "import_submit": "C",
    "upload": "C",
    "submit": "C",
    "view": "R",
    "list": "R",
    "preview": "R",
    "item_view": "R",
    "original_view": "R",
    "export": "R",
    "update": "U",
    "activate": "U",
    "rollout": "U",
    "rollback": "U",
    "cancel": "U",
    "revoke": "U",
    "remove": "D",
    "archive": "D",
}
# EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure, 12 major failure
_OUTCOMES = {"success": "0", "denied": "4", "throttled": "4", "failure": "4", "error": "8"}


def action_code(action: str) -> str:
    verb = action.split(".", 1)[-1]
    return _ACTION_CODES.get(verb, "E")


def record_of(ev: AuditEvent) -> dict[str, Any]:
    return {
        "seq": ev.seq,
        "event_date_time": ev.at.astimezone(UTC).isoformat(),
        "event_id": ev.action,
        "event_action_code": action_code(ev.action),
        "event_outcome_indicator": _OUTCOMES.get(ev.outcome, "8"),
        "outcome": ev.outcome,
        "user_id": ev.actor,
        "network_access_point_id": ev.client_addr,
        "participant_object_type": ev.object_type,
        "participant_object_id": ev.object_id,
        "request_id": ev.request_id,
        "details": ev.details,
        "key_id": ev.key_id,
        "hash": ev.hash,
    }


def events(
    sessions: Callable[[], Session],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 2000,
) -> Iterator[AuditEvent]:
    """Events in chain order with `since` <= at < `until`, a batch per short transaction."""
    last = 0
    while True:
        q = select(AuditEvent).where(AuditEvent.seq > last)
        if since is not None:
            q = q.where(AuditEvent.at >= since)
        if until is not None:
            q = q.where(AuditEvent.at < until)
        with sessions() as db:
            rows = db.execute(q.order_by(AuditEvent.seq).limit(batch)).scalars().all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def as_csv(rows: Iterator[AuditEvent]) -> Iterator[str]:
    buf = io.StringIO()
    out = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\r\n")
    out.writeheader()
    for ev in rows:
        rec = record_of(ev)
        rec["details"] = json.dumps(rec["details"], sort_keys=True, separators=(",", ":"))
        out.writerow({k: _csv_safe(v) for k, v in rec.items()})
        if buf.tell() > 65536:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _csv_safe(value: Any) -> Any:
    """Cells a spreadsheet would run as a formula (=, +, -, @ first) get a leading quote."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def as_json(rows: Iterator[AuditEvent]) -> Iterator[str]:
    """One JSON array, written an element at a time."""
    yield "["
    first = True
    for ev in rows:
        yield ("\n" if first else ",\n") + json.dumps(record_of(ev), sort_keys=True, default=str)
        first = False
    yield "\n]\n"


def parse_when(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 date or date-time (UTC when no offset is given); ValueError naming it."""
    if value is None or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not an ISO 8601 date or date-time") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
