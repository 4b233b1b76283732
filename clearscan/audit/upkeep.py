"""What runs at start-up and in the periodic audit check: seal the chain under the current key,
verify it, anchor its head, flush the anonymous-denial counts and archive what is past the
retention period."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from clearscan.audit import service
from clearscan.audit.anchors import AnchorError
from clearscan.audit.chain import ChainReport

if TYPE_CHECKING:
    from clearscan.config import Settings

log = logging.getLogger(__name__)

SYSTEM = service.RequestContext(actor="system")


def startup(*, db: Session) -> None:
    """Seal events that are not signed with the current key; start the anchor file when it was
    never written (a file that was written and went missing is reported, not replaced)."""
    service.seal(db=db, ctx=SYSTEM)
    from clearscan.audit import anchors

    config = anchors.config_for(db)
    if config is None or config.file.exists():
        return
    try:
        service.anchor_now(db=db, ctx=SYSTEM)
    except AnchorError as exc:
        log.error("audit anchor not written at start-up: %s", exc)


def check(
    *,
    sessions: Callable[[], Session],
    settings: Settings,
    on_verified: Callable[[ChainReport], None],
    before: Callable[[], None] | None = None,
    now: datetime | None = None,
) -> ChainReport:
    """One round of the periodic check: `before` (e.g. flush denial counts), verify, then (when
    the chain is whole) anchor and archive what is older than the retention period (counted back
    from `now`, default the current time)."""
    if before is not None:
        before()
    with sessions() as db:
        report = service.verify_chain(db=db)
    on_verified(report)
    if not report.ok:
        log.error("audit chain broken at event %s: %s", report.first_bad_seq, report.reason)
        return report
    with sessions() as db:
        try:
            service.anchor_now(db=db, ctx=SYSTEM)
        except AnchorError as exc:
            log.error("audit anchor not written: %s", exc)
        except Exception:  # an S3 or syslog outage: logged, the next round tries again
            log.exception("audit anchor not written")
    if settings.audit_retention_days > 0:
        from clearscan.audit.archive import ArchiveError, archive_older_than

        with sessions() as db:
            try:
                archive_older_than(
                    db=db,
                    settings=settings,
                    days=settings.audit_retention_days,
                    ctx=SYSTEM,
                    now=now,
                )
            except ArchiveError as exc:
                log.error("audit archive not written: %s", exc)
    return report
