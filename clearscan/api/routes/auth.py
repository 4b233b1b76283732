"""Token and user endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import OAuth2PasswordRequestForm

from clearscan.api.deps import AdminUser, SessionDep, StateDep, request_context
from clearscan.auth import service
from clearscan.auth.schemas import Token, UserCreate, UserList, UserPublic, UserUpdate
from clearscan.auth.security import create_access_token

router = APIRouter(tags=["auth"])


@router.post("/auth/token", response_model=Token, summary="Exchange username + password for a JWT")
def token(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    db: SessionDep,
    state: StateDep,
) -> Token:
    user = service.login(
        db=db,
        ctx=request_context(request),
        limiter=state.limiter,
        username=form.username,
        password=form.password,
        via="api",
    )
    minutes = state.settings.access_token_minutes
    return Token(
        access_token=create_access_token(secret=state.secret, user_id=user.id, minutes=minutes),
        expires_in=minutes * 60,
    )


@router.post("/users", response_model=UserPublic, status_code=201, tags=["users"])
def create_user(body: UserCreate, request: Request, db: SessionDep, admin: AdminUser) -> UserPublic:
    user = service.create(
        db=db,
        ctx=request_context(request, admin.username),
        username=body.username,
        password=body.password,
        role=body.role,
    )
    return UserPublic.model_validate(user)


@router.get("/users", response_model=UserList, tags=["users"])
def list_users(
    db: SessionDep,
    admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> UserList:
    rows, total = service.list_users(db=db, limit=limit, offset=offset)
    return UserList(items=[UserPublic.model_validate(u) for u in rows], total=total)


@router.patch("/users/{user_id}", response_model=UserPublic, tags=["users"])
def update_user(
    user_id: int, body: UserUpdate, request: Request, db: SessionDep, admin: AdminUser
) -> UserPublic:
    user = service.update(
        db=db,
        ctx=request_context(request, admin.username),
        user=service.require(db=db, user_id=user_id),
        role=body.role,
        disabled=body.disabled,
        password=body.password,
    )
    return UserPublic.model_validate(user)
