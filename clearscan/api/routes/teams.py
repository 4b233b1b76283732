"""Team endpoints: create (admins), list (admins every team; anyone else their own)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from clearscan.api.deps import AdminUser, Offset, SessionDep, TeamScope, request_context
from clearscan.api.errors import error_responses
from clearscan.teams import service
from clearscan.teams.models import Team
from clearscan.teams.schemas import TeamCreate, TeamList, TeamPublic

router = APIRouter(tags=["teams"])


def _public(db: Session, rows: list[Team]) -> list[TeamPublic]:
    counts = service.member_counts(db=db, team_ids=[t.id for t in rows])
    return [
        TeamPublic(id=t.id, name=t.name, created_at=t.created_at, members=counts.get(t.id, 0))
        for t in rows
    ]


@router.post(
    "/teams",
    response_model=TeamPublic,
    status_code=201,
    summary="Create a team (a department or a site)",
    responses=error_responses(409),
)
def create_team(body: TeamCreate, request: Request, db: SessionDep, admin: AdminUser) -> TeamPublic:
    team = service.create(db=db, ctx=request_context(request, admin.username), name=body.name)
    return _public(db, [team])[0]


@router.get(
    "/teams",
    response_model=TeamList,
    summary="Teams: every team for an admin, one's own teams for anyone else",
)
def list_teams(
    db: SessionDep,
    scope: TeamScope,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> TeamList:
    rows, total = service.list_teams(db=db, scope=scope, limit=limit, offset=offset)
    return TeamList(items=_public(db, rows), total=total)
