"""Service accounts and their API keys (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from clearscan.api.deps import AdminUser, Offset, SessionDep, request_context
from clearscan.api.errors import error_responses
from clearscan.auth import apikeys
from clearscan.auth.apikey_schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyList,
    ApiKeyPublic,
    ServiceAccountCreate,
    ServiceAccountList,
    ServiceAccountPublic,
)
from clearscan.auth.models import Role
from clearscan.auth.schemas import USERNAME_PATTERN

router = APIRouter(tags=["api-keys"])

KeyId = Annotated[int, Path(ge=1, le=2**63 - 1)]


@router.post(
    "/service-accounts",
    response_model=ServiceAccountPublic,
    status_code=201,
    summary="Create a service account (signs in with API keys only)",
    responses=error_responses(409),
)
def create_service_account(
    body: ServiceAccountCreate, request: Request, db: SessionDep, admin: AdminUser
) -> ServiceAccountPublic:
    user = apikeys.create_service_account(
        db=db,
        ctx=request_context(request, admin.username),
        name=body.name,
        role=Role(body.role),
        team_names=body.teams,
    )
    names = apikeys.team_names(db=db, users=[user])
    return ServiceAccountPublic.of(user, names[user.id])


@router.get("/service-accounts", response_model=ServiceAccountList)
def list_service_accounts(
    db: SessionDep,
    admin: AdminUser,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ServiceAccountList:
    rows, total = apikeys.list_service_accounts(db=db, limit=limit, offset=offset)
    names = apikeys.team_names(db=db, users=rows)
    items = [ServiceAccountPublic.of(u, names[u.id]) for u in rows]
    return ServiceAccountList(items=items, total=total)


@router.post(
    "/api-keys",
    response_model=ApiKeyCreated,
    status_code=201,
    summary="Create an API key for a service account; the reply shows the key this once",
    responses=error_responses(404, 409),
)
def create_api_key(
    body: ApiKeyCreate, request: Request, db: SessionDep, admin: AdminUser
) -> ApiKeyCreated:
    row, key = apikeys.create_key(
        db=db,
        ctx=request_context(request, admin.username),
        account=body.account,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
    )
    public = ApiKeyPublic.of(row, body.account)
    return ApiKeyCreated(**public.model_dump(), key=key)


@router.get("/api-keys", response_model=ApiKeyList, summary="API keys (never the keys themselves)")
def list_api_keys(
    db: SessionDep,
    admin: AdminUser,
    account: Annotated[str | None, Query(pattern=USERNAME_PATTERN)] = None,
    include_revoked: bool = True,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
) -> ApiKeyList:
    rows, total = apikeys.list_keys(
        db=db, account=account, include_revoked=include_revoked, limit=limit, offset=offset
    )
    return ApiKeyList(items=[ApiKeyPublic.of(k, name) for k, name in rows], total=total)


@router.delete(
    "/api-keys/{key_id}",
    response_model=ApiKeyPublic,
    summary="Revoke an API key: refused from the next request on",
)
def revoke_api_key(
    key_id: KeyId, request: Request, db: SessionDep, admin: AdminUser
) -> ApiKeyPublic:
    row, account = apikeys.revoke_key(
        db=db, ctx=request_context(request, admin.username), key_id=key_id
    )
    return ApiKeyPublic.of(row, account)
