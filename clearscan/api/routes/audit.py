"""Audit trail endpoints (admin only): list, verify (chain and anchors), export."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from clearscan.api.deps import (
    AdminUser,
    DateTimeQuery,
    Offset,
    SessionDep,
    StateDep,
    request_context,
)
from clearscan.api.responses import NO_STORE
from clearscan.audit import export, service
from clearscan.audit.actions import Action
from clearscan.audit.schemas import AuditEventPublic, AuditList, ChainStatus

router = APIRouter(tags=["audit"])


@router.get("/audit", response_model=AuditList)
def list_audit(
    db: SessionDep,
    admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Offset = 0,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
) -> AuditList:
    rows, total = service.list_events(db=db, limit=limit, offset=offset, actor=actor, action=action)
    return AuditList(items=[AuditEventPublic.model_validate(r) for r in rows], total=total)


@router.get("/audit/verify", response_model=ChainStatus)
def verify_audit(db: SessionDep, admin: AdminUser, state: StateDep) -> ChainStatus:
    """Recompute the keyed chain and compare it with its anchors outside the database."""
    r = service.verify_chain(db=db)
    state.metrics.audit_verified(ok=r.ok, checked=r.checked)
    return ChainStatus(ok=r.ok, checked=r.checked, first_bad_seq=r.first_bad_seq, reason=r.reason)


_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json"}


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    summary="The audit trail as CSV or JSON, with the fields of DICOM PS3.15 A.5.3",
    description="Who (`user_id`), what (`event_id`, `event_action_code`), when "
    "(`event_date_time`), where from (`network_access_point_id`), which object "
    "(`participant_object_type`, `participant_object_id`) and the outcome "
    "(`event_outcome_indicator`: 0 success, 4 minor failure, 8 serious failure), with the "
    "chain's `seq`, `key_id` and `hash`. `since` <= time < `until` (ISO 8601; UTC when no "
    "offset is given). Streamed; sent `Cache-Control: no-store`; the export is audited.",
    responses={
        200: {"content": {"text/csv": {}, "application/json": {}}},
    },
)
async def export_audit(
    request: Request,
    db: SessionDep,
    admin: AdminUser,
    state: StateDep,
    format: Annotated[Literal["csv", "json"], Query(description="csv or json")] = "json",
    since: DateTimeQuery = None,
    until: DateTimeQuery = None,
) -> StreamingResponse:
    start, end = since, until  # since <= time < until; since >= until selects nothing
    details = {"format": format, "since": _iso(start), "until": _iso(end)}
    entry = service.Entry(Action.AUDIT_EXPORT, object_type="audit", details=details)
    ctx = request_context(request, admin.username)
    await run_in_threadpool(service.record, entry, db=db, ctx=ctx)
    rows = export.events(state.sessions, since=start, until=end)
    body = export.as_csv(rows) if format == "csv" else export.as_json(rows)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    headers = {
        **NO_STORE,
        "Content-Disposition": f'attachment; filename="clearscan-audit-{stamp}.{format}"',
    }
    return StreamingResponse(body, media_type=_MEDIA[format], headers=headers)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
