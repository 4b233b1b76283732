"""Retention by archiving: a prefix of the chain older than the retention period is written to
an archive file, the file is read back and checked, and only then are its events removed from
the live table, in the transaction that appends an ``audit.archive`` checkpoint.

The checkpoint (an ordinary keyed event) records the archived range (first and last sequence
numbers), the hash the range starts from and its last hash, the event count, the file name and
the file's sha256. The live chain then starts right after the range: its first event's
``prev_hash`` is the checkpoint's ``last_hash`` (chain.check_chain). The database allows DELETE
of an audit row only when such a checkpoint in the table covers its sequence number (migration
0013), so this is the one path by which events leave the table, and never silently.

File format (JSON Lines): a header line ``{"format": "clearscan-audit-archive/1", ...}``, then
one line per event with every stored field (hashes and key ids included), in chain order.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from clearscan.audit import keys, service
from clearscan.audit.actions import Action
from clearscan.audit.chain import GENESIS, PAYLOAD_FIELDS, keyed_digest
from clearscan.audit.models import AuditEvent

if TYPE_CHECKING:
    from clearscan.config import Settings

FORMAT = "clearscan-audit-archive/1"
_STORED = (*PAYLOAD_FIELDS, "key_id", "prev_hash", "hash")


class ArchiveError(Exception):
    """An archive could not be written, or a file does not match its checkpoint."""


@dataclass(frozen=True)
class ArchiveResult:
    path: Path
    first_seq: int
    last_seq: int
    count: int
    sha256: str


def archive_dir(settings: Settings) -> Path:
    return (settings.audit_archive_dir or settings.data_dir / "audit-archive").expanduser()


def _line(ev: AuditEvent) -> str:
    row: dict[str, Any] = {k: getattr(ev, k) for k in _STORED}
    row["at"] = ev.at.astimezone(UTC).isoformat()
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str)


def archive_older_than(
    *,
    db: Session,
    settings: Settings,
    days: float,
    ctx: service.RequestContext,
    now: datetime | None = None,
) -> ArchiveResult | None:
    """Archive the events older than `days` (a prefix of the live chain); None when there are
    none. The chain must verify first; the file is checked before any event is removed."""
    if days < 0:
        raise ArchiveError("the retention period cannot be negative")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    report = service.verify_chain(db=db)
    if not report.ok:
        raise ArchiveError(f"the audit chain does not verify ({report.reason}); nothing archived")
    first = db.execute(select(func.min(AuditEvent.seq))).scalar_one()
    newer = db.execute(select(func.min(AuditEvent.seq)).where(AuditEvent.at >= cutoff))
    head_seq = db.execute(select(func.max(AuditEvent.seq))).scalar_one()
    stop = newer.scalar_one()
    last = (stop - 1) if stop is not None else head_seq
    db.rollback()
    if first is None or last is None or last < first:
        return None
    folder = archive_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"audit-{first:012d}-{last:012d}.jsonl"
    _write(db, path, first, last)
    result = verify_file(path, keyring=keys.keyring_for(db))
    if (result.first_seq, result.last_seq) != (first, last):
        raise ArchiveError(f"{path.name} holds events {result.first_seq}-{result.last_seq}")
    header = _header(path)
    checkpoint = service.Entry(
        Action.AUDIT_ARCHIVE,
        object_type="audit",
        details={
            "first_seq": first,
            "last_seq": last,
            "first_prev_hash": header["first_prev_hash"],
            "last_hash": header["last_hash"],
            "count": result.count,
            "file": path.name,
            "sha256": result.sha256,
            # carried forward: the anchor file must still exist once its start event is archived
            "anchor": _latest_anchor_start(db),
        },
    )
    try:
        service.append(checkpoint, db=db, ctx=ctx)
        gone = db.execute(
            delete(AuditEvent)
            .where(AuditEvent.seq >= first, AuditEvent.seq <= last)
            .execution_options(synchronize_session=False)
        )
        if getattr(gone, "rowcount", result.count) != result.count:
            raise ArchiveError("the live table changed while archiving; nothing removed")
        db.commit()
    except Exception:
        db.rollback()
        raise
    return result


def _latest_anchor_start(db: Session) -> dict[str, Any] | None:
    """The details of the newest ``audit.anchor`` start, in the table or carried by a checkpoint."""
    q = (
        select(AuditEvent.action, AuditEvent.details)
        .where(AuditEvent.action.in_([Action.AUDIT_ANCHOR, Action.AUDIT_ARCHIVE]))
        .order_by(AuditEvent.seq.desc())
    )
    for action, details in db.execute(q):
        if action == Action.AUDIT_ANCHOR:
            return dict(details)
        if details.get("anchor"):
            return dict(details["anchor"])
    return None


def _write(db: Session, path: Path, first: int, last: int, batch: int = 5000) -> None:
    tmp = path.with_suffix(".partial")
    prev_of_first = db.execute(
        select(AuditEvent.prev_hash).where(AuditEvent.seq == first)
    ).scalar_one()
    last_hash = db.execute(select(AuditEvent.hash).where(AuditEvent.seq == last)).scalar_one()
    header = {
        "format": FORMAT,
        "first_seq": first,
        "last_seq": last,
        "first_prev_hash": prev_of_first,
        "last_hash": last_hash,
        "count": last - first + 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps(header, sort_keys=True) + "\n")
        seq = first - 1
        while seq < last:
            rows = (
                db.execute(
                    select(AuditEvent)
                    .where(AuditEvent.seq > seq, AuditEvent.seq <= last)
                    .order_by(AuditEvent.seq)
                    .limit(batch)
                )
                .scalars()
                .all()
            )
            if not rows:
                break
            for ev in rows:
                f.write(_line(ev) + "\n")
            seq = rows[-1].seq
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    db.rollback()


def _header(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        header: dict[str, Any] = json.loads(f.readline())
    return header


def verify_file(path: Path, *, keyring: keys.Keyring) -> ArchiveResult:
    """Re-read an archive file: the header, every event's hash (HMAC or, for events from before
    the keyed chain, plain sha256) and their links, the count. ArchiveError on any fault."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as raw:
            for chunk in iter(lambda: raw.read(1 << 20), b""):
                digest.update(chunk)
        lines = path.open(encoding="utf-8")
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    with lines:
        try:
            header = json.loads(lines.readline())
        except ValueError:
            raise ArchiveError(f"{path.name}: no archive header") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ArchiveError(f"{path.name}: not a {FORMAT} file")
        prev = str(header["first_prev_hash"])
        expected, count, keyed_seen = int(header["first_seq"]), 0, False
        if expected == 1 and prev != GENESIS:
            raise ArchiveError(f"{path.name}: the first event does not start the chain")
        for n, text in enumerate(lines, start=2):
            try:
                row = json.loads(text)
                row["at"] = datetime.fromisoformat(row["at"])
            except (ValueError, KeyError, TypeError):
                raise ArchiveError(f"{path.name} line {n}: not an event") from None
            if row.get("seq") != expected or row.get("prev_hash") != prev:
                raise ArchiveError(f"{path.name} line {n}: event {expected} missing or moved")
            if row.get("key_id") is None and keyed_seen:
                raise ArchiveError(f"{path.name} line {n}: an unkeyed event after keyed ones")
            try:
                want = keyed_digest(keyring, row.get("key_id"), prev, row)
            except (LookupError, KeyError):
                raise ArchiveError(f"{path.name} line {n}: unknown audit key") from None
            if not hmac.compare_digest(want, str(row.get("hash"))):
                raise ArchiveError(f"{path.name} line {n}: event {expected} hash mismatch")
            keyed_seen = keyed_seen or row.get("key_id") is not None
            prev, expected, count = row["hash"], expected + 1, count + 1
    if count != header.get("count") or prev != header.get("last_hash"):
        raise ArchiveError(f"{path.name}: the header does not match the events it holds")
    return ArchiveResult(path, int(header["first_seq"]), expected - 1, count, digest.hexdigest())


def _checkpoints_in_table(db: Session) -> list[dict[str, Any]]:
    q = select(AuditEvent.details).where(AuditEvent.action == Action.AUDIT_ARCHIVE)
    return [dict(d) for d in db.execute(q).scalars()]


def _checkpoints_in_files(folder: Path, skip: Path) -> list[dict[str, Any]]:
    found = []
    for other in sorted(folder.glob("audit-*.jsonl")):
        if other == skip:
            continue
        with other.open(encoding="utf-8") as f:
            next(f, None)
            for text in f:
                if '"audit.archive"' in text:
                    row = json.loads(text)
                    if row.get("action") == Action.AUDIT_ARCHIVE:
                        found.append(dict(row["details"]))
    return found


def verify_archive(path: Path, *, db: Session) -> ArchiveResult:
    """Check an archive file (see verify_file) and compare it with its checkpoint: in the live
    chain, or (once that was archived in turn) in another archive file of the same folder."""
    result = verify_file(path, keyring=keys.keyring_for(db))
    header = _header(path)
    candidates = _checkpoints_in_table(db) + _checkpoints_in_files(path.parent, path)
    for cp in candidates:
        if cp.get("first_seq") == result.first_seq and cp.get("last_seq") == result.last_seq:
            if cp.get("sha256") != result.sha256 or cp.get("last_hash") != header["last_hash"]:
                raise ArchiveError(f"{path.name} differs from its checkpoint (sha256 or hash)")
            return result
    raise ArchiveError(f"{path.name}: no audit.archive checkpoint names this range")
