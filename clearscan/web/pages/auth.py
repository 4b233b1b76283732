"""Sign in, sign out, and the start page (which sends each role to its landing page)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from clearscan.api.cookies import CookiePolicy
from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.auth import service as users
from clearscan.auth.models import Role
from clearscan.state import AppState
from clearscan.web.errors import page_router
from clearscan.web.forms import (
    FormStr,
    check_login_csrf,
    new_login_csrf,
    safe_next,
)
from clearscan.web.present.auth import LoginPage
from clearscan.web.session import WebSessionDep, require_csrf
from clearscan.web.templating import redirect, render_page

router = page_router()


def landing(role: str) -> str:
    """Where a role starts: viewers read cases, the others analyse."""
    return "/cases" if role == Role.viewer.value else "/analyze"


def cookies(state: AppState) -> CookiePolicy:
    """The names and flags of the session and login CSRF cookies (production: ``__Host-``)."""
    return CookiePolicy.of(state.settings)


def _login_page(
    request: Request,
    state: AppState,
    *,
    next_url: str | None,
    username: str = "",
    error: str | None = None,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    token = new_login_csrf(state.secret)
    page = LoginPage(login_csrf=token, next_url=next_url or "", username=username, error=error)
    response = render_page(request, page, status=status, headers=headers)
    cookies(state).set_login_csrf(response, request, token)
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    db: SessionDep,
    state: StateDep,
    next_url: Annotated[str | None, Query(alias="next")] = None,
) -> Response:
    target = safe_next(next_url)
    token = request.cookies.get(cookies(state).session)
    found = users.resolve_session(db=db, token=token) if token else None
    if found is not None:
        return redirect(target or landing(found[0].role))
    return _login_page(request, state, next_url=target)


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    db: SessionDep,
    state: StateDep,
    username: FormStr = None,
    password: FormStr = None,
    csrf_token: FormStr = None,
    next_url: Annotated[str | None, Form(alias="next")] = None,
) -> Response:
    target = safe_next(next_url)
    name = (username or "").strip()[:128]
    jar = cookies(state)
    if not check_login_csrf(state.secret, request.cookies.get(jar.login_csrf), csrf_token):
        return _login_page(
            request,
            state,
            next_url=target,
            username=name,
            status=403,
            error="The sign-in form expired or could not be verified. Please try again.",
        )
    minutes = state.settings.session_minutes
    try:
        user, token = users.sign_in(
            db=db,
            ctx=request_context(request),
            limiter=state.limiter,
            username=name,
            password=password or "",
            minutes=minutes,
            previous_token=request.cookies.get(jar.session),
        )
    except users.LoginThrottled as exc:
        return _login_page(
            request,
            state,
            next_url=target,
            username=name,
            status=429,
            headers={"Retry-After": str(exc.retry_after)},
            error=f"Too many failed sign-in attempts. Try again in {exc.retry_after} s.",
        )
    except users.LoginFailed:
        return _login_page(
            request,
            state,
            next_url=target,
            username=name,
            status=400,
            error="Incorrect username or password.",
        )
    if target is None or target.startswith(("/login", "/logout")):
        target = landing(user.role)
    response = redirect(target)
    jar.set_session(response, request, token, max_age=minutes * 60)
    jar.clear_login_csrf(response, request)
    return response


@router.post("/logout")
def logout(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    users.sign_out(db=db, ctx=request_context(request, ws.username), user=ws.user, token=ws.token)
    response = redirect("/login")
    cookies(state).clear_session(response, request)
    return response


@router.get("/")
def home(ws: WebSessionDep) -> Response:
    return redirect(landing(ws.role))
