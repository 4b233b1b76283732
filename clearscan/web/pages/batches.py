"""Batches: the list with progress bars and the submit form (clinicians and admins), one batch's
page with its per-image results, and cancel."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import File, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.batches import service as batches
from clearscan.batches.archive import MAX_ITEMS, ArchiveLimits
from clearscan.errors import ClearScanError
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.web.errors import PageError, page_router, sentence
from clearscan.web.forms import FormStr, Pagination, QueryStr, parse_page
from clearscan.web.present.batches import (
    BATCH_NOTICES,
    BatchesPage,
    BatchForm,
    batch_page,
    batch_rows,
    model_choices,
)
from clearscan.web.session import (
    ClinicianSession,
    WebSession,
    WebSessionDep,
    require_csrf,
    scope_for,
)
from clearscan.web.templating import redirect, render_page

router = page_router()
PAGE_SIZE = 20


def _list_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    *,
    page: int = 1,
    form: BatchForm | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    found = batches.list_batches(
        db=db, scope=scope_for(request, db, ws), limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
    )
    view = BatchesPage(
        rows=batch_rows(batches.summaries(db=db, jobs=found.items)),
        pages=Pagination(page, PAGE_SIZE, found.total, {}),
        can_submit=ws.can_analyze,
        models=model_choices([e.manifest for e in state.registry.entries()])
        if ws.can_analyze
        else [],
        form=form or BatchForm(model=state.settings.default_model),
        submit_key=secrets.token_urlsafe(18),
        max_items=MAX_ITEMS,
        max_upload_mb=state.settings.max_upload_mb,
        error=error,
        teams=tuple(teams.names_of(db=db, user_ids=[ws.user.id])[ws.user.id])
        if ws.can_analyze
        else (),
    )
    return render_page(request, view, ws=ws, status=status)


@router.get("/batches", response_class=HTMLResponse)
def batches_view(
    request: Request, db: SessionDep, state: StateDep, ws: WebSessionDep, page: QueryStr = None
) -> Response:
    return _list_page(request, db, state, ws, page=parse_page(page))


@router.post("/batches", response_class=HTMLResponse)
def batches_submit(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    file: Annotated[UploadFile | None, File()] = None,
    model: FormStr = None,
    explain: FormStr = None,
    team: FormStr = None,
    submit_key: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    form = BatchForm(
        model=(model or state.settings.default_model).strip()[:128],
        explain=(explain or "").lower() in ("on", "true", "1", "yes"),
        team=(team or "").strip()[:64],
    )
    # a browser sends one empty part when no file is chosen
    if file is None or not file.size:
        return _list_page(
            request, db, state, ws, form=form, error="Choose a ZIP archive of images.", status=422
        )
    # the form's own key: a form sent twice (a double click, a reload) makes one batch
    key = f"web:{ws.user.id}:{submit_key}"[:128] if submit_key else None
    try:
        submitted = batches.submit_archive(
            db=db,
            ctx=request_context(request, ws.username),
            user=ws.user,
            registry=state.registry,
            blobs=state.blobs,
            default_model=state.settings.default_model,
            archive=file.file,
            limits=ArchiveLimits.from_upload_limit(state.settings.max_upload_bytes),
            model=form.model,
            explain=form.explain,
            queue=state.jobs,
            idempotency_key=key,
            via="web",
            team=form.team or None,
        )
    except ClearScanError as exc:  # shown on the form
        db.rollback()
        return _list_page(
            request,
            db,
            state,
            ws,
            form=form,
            error=f"{sentence(exc.detail)}.",
            status=exc.status_code,
        )
    return redirect(f"/batches/{submitted.job.id}?done=submitted")


def _batch_page(
    request: Request,
    db: Session,
    ws: WebSession,
    batch_id: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    try:
        job = batches.get_batch(db=db, batch_id=batch_id, scope=scope_for(request, db, ws))
    except batches.BatchNotFound:
        raise PageError(404, "Batch not found", "This batch does not exist.") from None
    page = batch_page(
        batches.detail(db=db, job=job),
        may_cancel=batches.may_cancel(job, ws.user),
        notice=notice,
        error=error,
    )
    return render_page(request, page, ws=ws, status=status)


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_view(
    batch_id: str, request: Request, db: SessionDep, ws: WebSessionDep, done: QueryStr = None
) -> Response:
    notice = BATCH_NOTICES.get(done or "")
    if done == "cancel":
        try:
            job = batches.get_batch(db=db, batch_id=batch_id, scope=scope_for(request, db, ws))
        except batches.BatchNotFound:
            job = None
        if job is not None and job.status == "cancelled":
            notice = BATCH_NOTICES["cancelled"]
        elif job is not None and job.cancel_requested and job.status == "running":
            notice = BATCH_NOTICES["cancel-requested"]
    return _batch_page(request, db, ws, batch_id, notice=notice)


@router.post("/batches/{batch_id}/cancel", response_class=HTMLResponse)
def batch_cancel(
    batch_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        batches.cancel_batch(
            db=db,
            ctx=request_context(request, ws.username),
            user=ws.user,
            batch_id=batch_id,
            blobs=state.blobs,
            via="web",
        )
    except batches.BatchNotFound:
        raise PageError(404, "Batch not found", "This batch does not exist.") from None
    except batches.BatchConflict as exc:  # already finished: said on the batch's page
        db.rollback()
        return _batch_page(request, db, ws, batch_id, error=f"{sentence(exc.detail)}.", status=409)
    return redirect(f"/batches/{batch_id}?done=cancel")
