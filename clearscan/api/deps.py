"""Typed FastAPI dependencies in one place: DB session, app state, request context, the current
user and role checks. Denied requests are audited here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from clearscan.api.cookies import CookiePolicy
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth import service as users
from clearscan.auth.models import Role, User
from clearscan.auth.security import read_access_token
from clearscan.auth.service import AuthError, NotAuthenticated, NotPermitted
from clearscan.state import AppState

MAX_OFFSET = 10**9
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="rows to skip")]
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
    """Audit a refused request; return the error to raise."""
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


def user_from_request(request: Request, db: Session, state: AppState) -> User | None:
    """Bearer token, or the browser session cookie for safe (read-only) methods."""
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


def get_current_user(request: Request, db: SessionDep, state: StateDep) -> User:
    user = user_from_request(request, db, state)
    if user is None:
        error = NotAuthenticated("not authenticated: send a valid bearer token")
        raise _deny(db, request, error, None)
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

    return Depends(check)


AdminUser = Annotated[User, require_roles(Role.admin)]
ClinicianUser = Annotated[User, require_roles(Role.admin, Role.clinician)]
AnyUser = CurrentUser
