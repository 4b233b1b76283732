"""Token and user endpoints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Form, Path, Query, Request
from sqlalchemy.orm import Session

from clearscan.api.deps import AdminUser, Offset, SessionDep, StateDep, request_context
from clearscan.api.errors import error_responses
from clearscan.auth import service
from clearscan.auth.models import User
from clearscan.auth.schemas import Token, UserCreate, UserList, UserPublic, UserUpdate
from clearscan.auth.security import create_access_token

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/token",
    response_model=Token,
    summary="Exchange username + password for a JWT",
    responses=error_responses(401, 429),
)
def token(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=256)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
    db: SessionDep,
    state: StateDep,
) -> Token:
    """An OAuth2 password grant: form fields ``username`` and ``password`` (others, such as
    ``grant_type``, are ignored)."""
    user = service.login(
        db=db,
        ctx=request_context(request),
        limiter=state.limiter,
        username=username,
        password=password,
        via="api",
    )
    minutes = state.settings.access_token_minutes
    return Token(
        access_token=create_access_token(
            secret=state.secret, user_id=user.id, minutes=minutes, version=user.token_version
        ),
        expires_in=minutes * 60,
    )


@router.post(
    "/users",
    response_model=UserPublic,
    status_code=201,
    tags=["users"],
    responses=error_responses(409),
)
def create_user(body: UserCreate, request: Request, db: SessionDep, admin: AdminUser) -> UserPublic:
    """Without `teams` the user joins the team `general`; an unknown team name answers 422."""
    user = service.create(
        db=db,
        ctx=request_context(request, admin.username),
        username=body.username,
        password=body.password,
        role=body.role,
        team_names=body.teams,
    )
    return _public(db, [user])[0]


def _public(db: Session, users: Sequence[User]) -> list[UserPublic]:
    names = service.team_names(db=db, users=users)
    return [
        UserPublic.model_validate(u).model_copy(update={"teams": names.get(u.id, [])})
        for u in users
    ]


@router.get("/users", response_model=UserList, tags=["users"])
def list_users(
    db: SessionDep,
    admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> UserList:
    rows, total = service.list_users(db=db, limit=limit, offset=offset)
    return UserList(items=_public(db, rows), total=total)


@router.patch(
    "/users/{user_id}", response_model=UserPublic, tags=["users"], responses=error_responses(409)
)
def update_user(
    user_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    body: UserUpdate,
    request: Request,
    db: SessionDep,
    admin: AdminUser,
) -> UserPublic:
    user = service.update(
        db=db,
        ctx=request_context(request, admin.username),
        user=service.require(db=db, user_id=user_id),
        role=body.role,
        disabled=body.disabled,
        password=body.password,
        team_names=body.teams,
    )
    return _public(db, [user])[0]
