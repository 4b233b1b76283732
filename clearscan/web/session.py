"""Browser sessions for the pages: who is signed in, role checks and CSRF checks. Without a
session a page raises LoginRequired (a redirect to sign in); a refused role or token raises the
403 PageError, audited as `access.denied` like the API's refusals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from clearscan.api.cookies import CookiePolicy
from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.audit import service as audit
from clearscan.audit.actions import Action
from clearscan.auth import service as users
from clearscan.auth.models import Role, User
from clearscan.auth.security import check_csrf, csrf_token
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.teams.service import Scope
from clearscan.web.errors import LoginRequired, PageError
from clearscan.web.forms import safe_next


@dataclass(frozen=True)
class WebSession:
    user: User
    session_id: str  # the user_sessions row id (sha256 of the cookie token)
    token: str  # the cookie value
    csrf: str  # synchroniser token for every POST form of this session
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin.value

    @property
    def can_analyze(self) -> bool:
        return self.role in (Role.admin.value, Role.clinician.value)


def current_session(request: Request, db: SessionDep, state: StateDep) -> WebSession:
    token = request.cookies.get(CookiePolicy.of(state.settings).session)
    found = users.resolve_session(db=db, token=token) if token else None
    if found is None or token is None:
        target = None
        if request.method in ("GET", "HEAD"):
            query = f"?{request.url.query}" if request.url.query else ""
            target = safe_next(request.url.path + query)
        raise LoginRequired(target)
    user, row = found
    request.state.user = user
    ws = WebSession(
        user=user,
        session_id=row.id,
        token=token,
        csrf=csrf_token(secret=state.secret, session_token_id=row.id),
        username=user.username,
        role=user.role,
    )
    request.state.web_session = ws  # for the error page's top bar
    return ws


WebSessionDep = Annotated[WebSession, Depends(current_session)]


def scope_for(request: Request, db: Session, ws: WebSession) -> Scope:
    """What the signed-in user may see: their teams' rows, or every row for an admin."""
    return teams.scope_of(db=db, user=ws.user, ctx=request_context(request, ws.username))


def web_scope(request: Request, ws: WebSessionDep, db: SessionDep) -> Scope:
    return scope_for(request, db, ws)


WebScope = Annotated[Scope, Depends(web_scope)]


def deny(
    db: Session, request: Request, ws: WebSession, message: str, **details: object
) -> PageError:
    """Audit an `access.denied` event (like the API does) and return the 403 page error."""
    audit.record(
        audit.Entry(
            Action.ACCESS_DENIED,
            outcome="denied",
            details={
                "method": request.method,
                "path": request.url.path,
                "status": 403,
                "via": "web",
                **details,
            },
        ),
        db=db,
        ctx=request_context(request, ws.username),
    )
    return PageError(403, "Access denied", message)


def _roles(*roles: Role) -> object:
    allowed = {r.value for r in roles}
    names = " or ".join(sorted(allowed))

    def check(request: Request, ws: WebSessionDep, db: SessionDep) -> WebSession:
        if ws.role not in allowed:
            raise deny(
                db,
                request,
                ws,
                f"This page needs the {names} role; you are signed in as {ws.role}.",
            )
        return ws

    return Depends(check)


ClinicianSession = Annotated[WebSession, _roles(Role.admin, Role.clinician)]
AdminSession = Annotated[WebSession, _roles(Role.admin)]


def require_csrf(
    request: Request, db: Session, state: AppState, ws: WebSession, token: str | None
) -> None:
    """Raise the 403 page unless `token` is this session's CSRF token. Call before any change."""
    if not check_csrf(secret=state.secret, session_token_id=ws.session_id, token=token):
        raise deny(
            db,
            request,
            ws,
            "The form could not be verified (missing or expired security token). "
            "Reload the page and try again.",
            reason="csrf",
        )
