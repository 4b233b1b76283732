"""New analysis: upload images, choose a model, and land on the new case."""

from __future__ import annotations

from typing import Annotated

from fastapi import File, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.cases.workflow import PredictRejected, predict_images
from clearscan.state import AppState
from clearscan.teams import service as teams
from clearscan.web.errors import page_router
from clearscan.web.forms import FormStr
from clearscan.web.present.cases import AnalyzeForm, analyze_page
from clearscan.web.session import ClinicianSession, WebSession, require_csrf
from clearscan.web.templating import redirect, render_page

router = page_router()


def _page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    *,
    values: AnalyzeForm | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    names = teams.names_of(db=db, user_ids=[ws.user.id])[ws.user.id]
    page = analyze_page(state.registry.entries(), state.settings, values, error, teams=names)
    return render_page(request, page, ws=ws, status=status)


@router.get("/analyze", response_class=HTMLResponse)
def analyze_form(
    request: Request, db: SessionDep, state: StateDep, ws: ClinicianSession
) -> Response:
    return _page(request, db, state, ws)


def _problem(uploads: list[bytes], values: AnalyzeForm) -> str | None:
    if not uploads:
        return "Choose at least one image file."
    if len(values.patient_ref) > 128:
        return "The patient reference is longer than 128 characters."
    if len(values.note) > 4000:
        return "The note is longer than 4000 characters."
    return None


@router.post("/analyze", response_class=HTMLResponse)
def analyze_submit(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    file: Annotated[list[UploadFile] | None, File()] = None,
    model: FormStr = None,
    explain: FormStr = None,
    patient_ref: FormStr = None,
    note: FormStr = None,
    team: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    values = AnalyzeForm(
        model=model or state.settings.default_model,
        explain=(explain or "").lower() in ("on", "true", "1", "yes"),
        patient_ref=(patient_ref or "").strip(),
        note=(note or "").strip(),
        team=(team or "").strip()[:64],
    )
    # A browser sends one empty part when no file is chosen.
    uploads = [f.file.read() for f in file or [] if f.filename or f.size]
    if problem := _problem(uploads, values):
        return _page(request, db, state, ws, values=values, error=problem, status=422)
    try:
        case, _ = predict_images(
            db=db,
            ctx=request_context(request, ws.username),
            user=ws.user,
            registry=state.registry,
            blobs=state.blobs,
            limits=state.limits,
            max_files=state.settings.max_files_per_request,
            default_model=state.settings.default_model,
            sessions=state.sessions,
            metrics=state.metrics,
            uploads=uploads,
            deid=state.settings.deid_policy(),
            model_name=model or None,
            explain=values.explain,
            patient_ref=values.patient_ref or None,
            note=values.note or None,
            shadow_queue=state.jobs,
            admission=state.analyses,
            team=values.team or None,
        )
    except PredictRejected as exc:  # shown on the form, with what was entered
        return _page(
            request, db, state, ws, values=values, error=exc.detail, status=exc.status_code
        )
    return redirect(f"/cases/{case.id}")
