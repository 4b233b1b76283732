"""The keyed hash chain: what each event's hash covers, and the check of the whole chain.

An event's hash is HMAC-SHA256 (under the audit key, see keys.py) of the previous event's hash
followed by the canonical JSON of the event, its key id included. Events written before the chain
was keyed (``key_id`` NULL) carry sha256(prev_hash || JSON) and are accepted only before the
first keyed event: the first keyed event covers the last plain hash, so the plain prefix cannot
be rewritten either. A chain whose events are all plain was never sealed (``seal``) or was
rewritten by someone without the key: the check fails.

Archiving removes a prefix of the chain: the ``audit.archive`` event appended with it records the
archived range's last sequence number and hash, and the live chain must start right after the
latest such checkpoint (see archive.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from clearscan.audit.actions import Action
from clearscan.audit.keys import Keyring
from clearscan.audit.models import AuditEvent, AuditHead

GENESIS = "0" * 64
CHAIN_PURPOSE = b"chain"

PAYLOAD_FIELDS = (
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


def payload_of(row: dict[str, Any]) -> dict[str, Any]:
    """What an event's hash covers (the same for a stored row and one about to be written)."""
    out = {k: row[k] for k in PAYLOAD_FIELDS}
    out["at"] = row["at"].astimezone(UTC).isoformat()
    if row.get("key_id") is not None:  # plain (legacy) events were hashed without it
        out["key_id"] = row["key_id"]
    return out


def _body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def plain_digest(prev_hash: str, payload: dict[str, Any]) -> str:
    """The hash of an event written before the chain was keyed."""
    return hashlib.sha256((prev_hash + _body(payload)).encode()).hexdigest()


def keyed_digest(keyring: Keyring, key_id: str | None, prev_hash: str, row: dict[str, Any]) -> str:
    """The hash `row` must carry: HMAC under the key `key_id` names, or plain sha256 when None.
    Raises LookupError for a key the keyring lacks."""
    payload = payload_of(row)
    if key_id is None:
        return plain_digest(prev_hash, payload)
    key = keyring.get(key_id)
    if key is None:
        raise LookupError(key_id)
    return key.mac(CHAIN_PURPOSE, (prev_hash + _body(payload)).encode())


def row_of(ev: AuditEvent) -> dict[str, Any]:
    return {k: getattr(ev, k) for k in (*PAYLOAD_FIELDS, "key_id", "prev_hash", "hash")}


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


@dataclass
class ChainState:
    """What a check learnt besides its verdict: the head it checked up to and the last
    anchor and archive records found in the chain."""

    head_seq: int = 0
    head_hash: str = GENESIS
    first_seq: int | None = None
    hashes: dict[int, str] = field(default_factory=dict)  # only the seqs asked for
    last_anchor_event: dict[str, Any] | None = None


def _fail(checked: int, seq: int | None, reason: str) -> ChainReport:
    return ChainReport(False, checked, seq, reason)


def check_chain(
    *,
    db: Session,
    keyring: Keyring,
    batch: int = 5000,
    want: frozenset[int] = frozenset(),
    state: ChainState | None = None,
) -> ChainReport:
    """Recompute every live hash in order; report the first break (an edit, a deletion, a
    reorder, an event without the key, a gap at the start that no archive checkpoint covers).

    The head is read first and the chain checked up to it: an event appended meanwhile lies
    beyond that head and is left for the next check, never mistaken for a break. `state` (when
    given) receives the head checked and the hashes of the seqs in `want`."""
    st = state if state is not None else ChainState()
    head = db.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        return _fail(0, None, "the chain head row is missing")
    st.head_seq, st.head_hash = head.seq, head.hash
    first = db.execute(
        select(func.min(AuditEvent.seq)).where(AuditEvent.seq <= head.seq)
    ).scalar_one()
    st.first_seq = first
    if first is None:
        if head.seq != 0:
            return _fail(0, 1, "events missing: the head names events the table lacks")
        return ChainReport(True, 0)
    prev: str | None = GENESIS if first == 1 else None  # else: the first event's prev_hash
    expected, checked, last_seq = first, 0, first - 1
    keyed_seen, checkpoint = False, None
    while True:
        rows = (
            db.execute(
                select(AuditEvent)
                .where(AuditEvent.seq > last_seq, AuditEvent.seq <= head.seq)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
            .scalars()
            .all()
        )
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected:
                return _fail(checked, expected, "missing event")
            if prev is None:
                prev = ev.prev_hash  # checked against the archive checkpoint below
            if ev.prev_hash != prev:
                return _fail(checked, ev.seq, "hash mismatch")
            if ev.key_id is None and keyed_seen:
                return _fail(checked, ev.seq, "an event without the audit key after keyed ones")
            try:
                digest = keyed_digest(keyring, ev.key_id, prev, row_of(ev))
            except LookupError:
                return _fail(
                    checked,
                    ev.seq,
                    f"event signed with an unknown audit key {ev.key_id} (a rotated key belongs "
                    "in CLEARSCAN_AUDIT_PREVIOUS_KEYS)",
                )
            if not hmac.compare_digest(digest, ev.hash):
                return _fail(checked, ev.seq, "hash mismatch")
            keyed_seen = keyed_seen or ev.key_id is not None
            if ev.action == Action.AUDIT_ARCHIVE:
                checkpoint = ev.details
                if ev.details.get("anchor"):  # the anchor start it archived, carried forward
                    st.last_anchor_event = ev.details["anchor"]
            elif ev.action == Action.AUDIT_ANCHOR:
                st.last_anchor_event = ev.details
            if ev.seq in want:
                st.hashes[ev.seq] = ev.hash
            prev, expected, checked, last_seq = ev.hash, expected + 1, checked + 1, ev.seq
    if head.seq != last_seq or head.hash != prev:
        return _fail(checked, last_seq + 1, "events missing at the end of the chain")
    if first != 1:
        ok_start = (
            checkpoint is not None
            and checkpoint.get("last_seq") == first - 1
            and checkpoint.get("last_hash") == _first_prev(db, first)
        )
        if not ok_start:
            reason = "events missing at the start (no archive checkpoint covers them)"
            return _fail(checked, first - 1, reason)
    if checked and not keyed_seen:
        return _fail(
            checked,
            first,
            "no event carries the audit key: the chain was never sealed or was "
            "rewritten without the key",
        )
    return ChainReport(True, checked)


def check_since(
    *, db: Session, keyring: Keyring, after_seq: int, after_hash: str, batch: int = 5000
) -> tuple[int, str] | str:
    """Check the events after an anchored head (`after_seq`, `after_hash`) up to the current
    head: contiguous, each chained to the one before, each HMAC right, the head row matching.
    The head (seq, hash) when they are, else the reason. Reads only what was appended since the
    anchor, so it can run every minute; the whole chain is left to :func:`check_chain`."""
    head = db.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one_or_none()
    if head is None:
        return "the chain head row is missing"
    if head.seq < after_seq:
        return f"the chain ends at event {head.seq}, before the anchored event {after_seq}"
    if head.seq == after_seq:
        if head.hash != after_hash:
            return "the head differs from its anchor"
        return head.seq, head.hash
    prev, expected = after_hash, after_seq + 1
    while expected <= head.seq:
        rows = (
            db.execute(
                select(AuditEvent)
                .where(AuditEvent.seq >= expected, AuditEvent.seq <= head.seq)
                .order_by(AuditEvent.seq)
                .limit(batch)
            )
            .scalars()
            .all()
        )
        if not rows:
            return f"event {expected} is missing"
        for ev in rows:
            if ev.seq != expected:
                return f"event {expected} is missing"
            if ev.prev_hash != prev or ev.key_id is None:
                return f"event {ev.seq} does not follow the anchored chain"
            try:
                digest = keyed_digest(keyring, ev.key_id, prev, row_of(ev))
            except LookupError:
                return f"event {ev.seq} is signed with an unknown audit key {ev.key_id}"
            if not hmac.compare_digest(digest, ev.hash):
                return f"event {ev.seq}: hash mismatch"
            prev, expected = ev.hash, expected + 1
    if head.hash != prev:
        return "the head differs from its last event"
    return head.seq, head.hash


def _first_prev(db: Session, seq: int) -> str | None:
    q = select(AuditEvent.prev_hash).where(AuditEvent.seq == seq)
    return db.execute(q).scalar_one_or_none()
