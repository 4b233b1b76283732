"""Audit trail endpoints (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from clearscan.api.deps import AdminUser, Offset, SessionDep, StateDep
from clearscan.audit import service
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
    r = service.verify_chain(db=db)
    state.metrics.audit_verified(ok=r.ok, checked=r.checked)
    return ChainStatus(ok=r.ok, checked=r.checked, first_bad_seq=r.first_bad_seq, reason=r.reason)
