"""Administration: users (add, change role, disable) and the audit trail."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.audit import service as audit
from clearscan.auth import service as users
from clearscan.auth.models import Role
from clearscan.auth.schemas import UserCreate
from clearscan.web.errors import PageError, page_router, sentence
from clearscan.web.forms import FormStr, Pagination, QueryStr, parse_page
from clearscan.web.present.admin import (
    ACTIONS,
    FIELD_HELP,
    ROLES,
    AuditPage,
    UsersPage,
    empty_user_form,
)
from clearscan.web.session import AdminSession, WebSession, require_csrf
from clearscan.web.templating import redirect, render_page

router = page_router()
AUDIT_PAGE_SIZE = 50
USERS_SHOWN = 500


def _users_page(
    request: Request,
    db: Session,
    ws: WebSession,
    *,
    error: str | None = None,
    notice: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rows, total = users.list_users(db=db, limit=USERS_SHOWN)
    page = UsersPage(
        users=rows,
        total=total,
        roles=ROLES,
        form=form or empty_user_form(),
        error=error,
        notice=notice,
    )
    return render_page(request, page, ws=ws, status=status)


@router.get("/admin/users", response_class=HTMLResponse)
def users_page(
    request: Request,
    db: SessionDep,
    ws: AdminSession,
    created: QueryStr = None,
    updated: QueryStr = None,
) -> Response:
    notice = None
    for key, verb in ((created, "created"), (updated, "updated")):
        if key and key.isdigit() and (u := users.get(db=db, user_id=int(key))) is not None:
            notice = f"User {u.username} {verb}."
    return _users_page(request, db, ws, notice=notice)


@router.post("/admin/users", response_class=HTMLResponse)
def users_create(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    username: FormStr = None,
    password: FormStr = None,
    role: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    form = {"username": (username or "").strip(), "role": role or ""}
    try:
        body = UserCreate.model_validate(
            {"username": form["username"], "password": password or "", "role": role or ""}
        )
    except ValidationError as exc:
        fields = sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]})
        problem = " ".join(FIELD_HELP.get(f, f"{f}: invalid") for f in fields)
        return _users_page(request, db, ws, error=problem, form=form, status=422)
    try:
        user = users.create(
            db=db,
            ctx=request_context(request, ws.username),
            username=body.username,
            password=body.password,
            role=body.role,
        )
    except users.UserExists as exc:  # shown on the form, with what was entered
        return _users_page(request, db, ws, error=str(exc), form=form, status=409)
    return redirect(f"/admin/users?created={user.id}")


@router.post("/admin/users/{user_id}", response_class=HTMLResponse)
def users_update(
    user_id: int,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    role: FormStr = None,
    disabled: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    user = users.get(db=db, user_id=user_id)
    if user is None:
        raise PageError(404, "User not found", "This user does not exist.")
    if role and role not in ROLES:
        return _users_page(request, db, ws, error=FIELD_HELP["role"], status=422)
    if disabled not in (None, "", "true", "false"):
        return _users_page(request, db, ws, error="Unknown account status.", status=422)
    try:
        users.update(
            db=db,
            ctx=request_context(request, ws.username),
            user=user,
            role=Role(role) if role else None,
            disabled=None if not disabled else disabled == "true",
        )
    except users.LastAdmin as exc:  # said on the users page
        db.rollback()
        return _users_page(request, db, ws, error=f"{sentence(str(exc))}.", status=409)
    return redirect(f"/admin/users?updated={user.id}")


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    db: SessionDep,
    ws: AdminSession,
    actor: QueryStr = None,
    action: QueryStr = None,
    page: QueryStr = None,
) -> Response:
    params = {"actor": (actor or "").strip()[:64], "action": (action or "").strip()[:64]}
    number = parse_page(page)
    rows, total = audit.list_events(
        db=db,
        limit=AUDIT_PAGE_SIZE,
        offset=(number - 1) * AUDIT_PAGE_SIZE,
        actor=params["actor"] or None,
        action=params["action"] or None,
    )
    view = AuditPage(
        events=rows,
        params=params,
        chain=audit.verify_chain(db=db),
        actions=ACTIONS,
        pages=Pagination(number, AUDIT_PAGE_SIZE, total, params),
    )
    return render_page(request, view, ws=ws)
