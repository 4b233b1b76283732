"""Typed FastAPI dependencies in one place: DB session, app state, request context, the current
user and role checks. Denied requests are audited here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BeforeValidator
from sqlalchemy.orm import Session

from clearscan.api.cookies import CookiePolicy
from clearscan.api.scopes import register_role_check, required_scope, route_template
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth import apikeys
from clearscan.auth import service as users
from clearscan.auth.models import Role, User
from clearscan.auth.security import read_access_token
from clearscan.auth.service import AuthError, NotAuthenticated, NotPermitted
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.teams.service import Scope

MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _not_a_number(value: object) -> object:
    """Refuse a bare number, which pydantic would read as a Unix time (``until=0.5``)."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        raise ValueError("an ISO 8601 date-time expected, not a number")
    return value


def _utc(value: datetime | None) -> datetime | None:
    """A date-time without an offset is taken as UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


DateTimeQuery = Annotated[
    datetime | None,
    BeforeValidator(_not_a_number),
    AfterValidator(_utc),
    Query(description="ISO 8601 date-time (UTC unless it has an offset)"),
]
"""The ``offset`` of every paged list: bounded, so no database sees an out-of-range integer."""


# Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in the
# thread pool, a hop (two thread switches) per dependency per request.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.clearscan
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_db(state: StateDep) -> AsyncIterator[Session]:
    db = state.sessions()  # no connection yet: it is taken on first use, in a worker thread
    try:
        yield db
    finally:
        await run_in_threadpool(db.close)  # returns the connection (a rollback: I/O)


SessionDep = Annotated[Session, Depends(get_db)]


def client_addr(request: Request) -> str | None:
    return request.client.host if request.client else None


def request_context(request: Request, actor: str | None = None) -> audit.RequestContext:
    return audit.RequestContext(
        actor=actor,
        client_addr=client_addr(request),
        request_id=getattr(request.state, "request_id", None),
    )


def _deny(db: Session, request: Request, error: AuthError, actor: str | None) -> AuthError:
    """Audit a refused request; return the error to raise. Anonymous ones (no known user) are
    counted in the metrics; past a few per interval they are summarised into the chain once per
    interval (a 401 flood never takes the chain's lock per request: audit/denials.py)."""
    if actor is None:
        state: AppState = request.app.state.clearscan
        route = route_template(request.scope) or "(unmatched)"
        state.metrics.anonymous_denials.labels(route).inc()
        own_event, due = state.denials.note(
            route=route, method=request.method, status=error.status_code, addr=client_addr(request)
        )
        if due:
            state.denials.flush(db=db)
        if not own_event:
            return error
    audit.record(
        audit.Entry(
            Action.ACCESS_DENIED,
            outcome="denied",
            details={
                "method": request.method,
                "path": request.url.path,
                "status": error.status_code,
            },
        ),
        db=db,
        ctx=request_context(request, actor),
    )
    return error


API_KEY_HEADER = "X-API-Key"


class CredentialsConflict(NotAuthenticated):
    """Both an API key header and an ``Authorization`` header came (401): send one."""


def api_key_of(request: Request) -> str | None:
    """The API key the request carries (``X-API-Key``, or ``Authorization: Bearer csk_...``),
    if any. CredentialsConflict when it carries a key and another credential header."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else ""
    given = request.headers.get(API_KEY_HEADER)
    if given is not None:
        if header:
            raise CredentialsConflict(
                f"send one credential: an {API_KEY_HEADER} header or an Authorization header"
            )
        return given.strip()
    return bearer if apikeys.looks_like_key(bearer) else None


def user_from_request(request: Request, db: Session, state: AppState) -> User | None:
    """An API key (service accounts), a bearer token, or the browser session cookie for safe
    (read-only) methods. A key that authenticates is left in ``request.state.api_key``."""
    try:
        key = api_key_of(request)
    except CredentialsConflict:
        return None
    if key is not None:
        try:
            account, row = apikeys.authenticate(db=db, key=key)
        except apikeys.KeyRefused:
            return None
        request.state.api_key = row
        return account
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token:
        claims = read_access_token(token.strip(), secret=state.secret)
        user = users.get(db=db, user_id=claims.user_id) if claims is not None else None
        if user is None or user.disabled or claims is None:
            return None
        # a password change or disabling the user since the token was issued revokes it
        return user if user.token_version == claims.version else None
    cookie = request.cookies.get(CookiePolicy.of(state.settings).session)
    if cookie and request.method in ("GET", "HEAD"):
        found = users.resolve_session(db=db, token=cookie)
        return found[0] if found else None
    return None


def has_credentials(request: Request, db: Session, state: AppState) -> bool:
    """Whether the request carries credentials that name an active user: what
    `user_from_request` accepts (an API key, a bearer token), or a browser session cookie (the
    pages' upload forms post with it). Only headers and cookies are read: the request middleware
    asks this before a large body is read; roles, scopes and CSRF are checked by the route."""
    if user_from_request(request, db, state) is not None:
        return True
    cookie = request.cookies.get(CookiePolicy.of(state.settings).session)
    if not cookie:
        return False
    return users.resolve_session(db=db, token=cookie) is not None


def refuse_anonymous(request: Request, db: Session) -> AuthError:
    """The 401 of a request refused before its body was read for want of credentials (the
    request middleware); counted and audited as every anonymous denial is."""
    error = NotAuthenticated("not authenticated: send a valid bearer token with the upload")
    return _deny(db, request, error, None)


_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="An access token from `POST /api/v1/auth/token`, or an API key (`csk_...`)",
)
_api_key_scheme = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="An API key of a service account (`csk_...`), as `POST /api/v1/api-keys` made it",
)
BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)]
ApiKeyCredentials = Annotated[str | None, Depends(_api_key_scheme)]


def get_current_user(
    request: Request,
    db: SessionDep,
    state: StateDep,
    _bearer: BearerCredentials = None,  # declares the security schemes in the OpenAPI document
    _api_key: ApiKeyCredentials = None,
) -> User:
    try:
        key = api_key_of(request)
    except CredentialsConflict as exc:
        raise _deny(db, request, exc, None) from None
    if key is not None:
        return _key_user(request, db, key)
    user = user_from_request(request, db, state)
    if user is None:
        error = NotAuthenticated("not authenticated: send a valid bearer token")
        raise _deny(db, request, error, None)
    request.state.user = user
    return user


def _key_user(request: Request, db: Session, key: str) -> User:
    """The service account of a valid API key whose scopes allow this route; else 401 (the key)
    or 403 (the scope), audited. The key itself is never recorded; its prefix is."""
    try:
        user, row = apikeys.authenticate(db=db, key=key)
    except apikeys.KeyRefused as exc:
        raise _deny(db, request, exc, None) from None
    need = required_scope(request.method, request.scope)
    if need not in row.scope_set:
        path = route_template(request.scope) or request.url.path
        has = ", ".join(sorted(row.scope_set))
        error = NotPermitted(
            f"this API key lacks the {need!r} scope for {request.method} {path} "
            f"(it has: {has}); API keys can hold only the predict and read scopes"
        )
        raise _deny(db, request, error, user.username)
    request.state.api_key = row
    request.state.user = user
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: Role) -> object:
    allowed = {r.value for r in roles}

    async def check(request: Request, user: CurrentUser, db: SessionDep) -> User:
        if user.role not in allowed:
            error = NotPermitted(
                f"role {user.role!r} may not do this; needs one of: {', '.join(sorted(allowed))}"
            )
            raise await run_in_threadpool(_deny, db, request, error, user.username)
        return user

    register_role_check(check, frozenset(allowed))
    return Depends(check)


async def get_scope(request: Request, user: CurrentUser, db: SessionDep) -> Scope:
    """What the signed-in user may see: their teams' rows, or every row for an admin."""
    ctx = request_context(request, user.username)
    return await run_in_threadpool(teams.scope_of, db=db, user=user, ctx=ctx)


TeamScope = Annotated[Scope, Depends(get_scope)]
"""The team scope of the signed-in user (requires sign-in, as CurrentUser)."""

AdminUser = Annotated[User, require_roles(Role.admin)]
ClinicianUser = Annotated[User, require_roles(Role.admin, Role.clinician)]
AnyUser = CurrentUser
