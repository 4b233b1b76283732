"""Cases: the filtered list, one case with its images and predictions, and reviews."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from clearscan.api.deps import SessionDep, StateDep, request_context
from clearscan.audit import service as audit
from clearscan.cases import service as cases
from clearscan.cases.models import Prediction
from clearscan.state import AppState
from clearscan.teams.service import Scope
from clearscan.web.errors import PageError, page_router
from clearscan.web.forms import (
    FormStr,
    Pagination,
    QueryStr,
    day_after,
    day_start,
    parse_date,
    parse_page,
)
from clearscan.web.present.cases import CasesPage, case_page
from clearscan.web.session import (
    ClinicianSession,
    WebScope,
    WebSession,
    WebSessionDep,
    require_csrf,
)
from clearscan.web.templating import redirect, render_page

router = page_router()
PAGE_SIZE = 20


@router.get("/cases", response_class=HTMLResponse)
def cases_page(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    scope: WebScope,
    since: QueryStr = None,
    until: QueryStr = None,
    label: QueryStr = None,
    user: QueryStr = None,
    page: QueryStr = None,
) -> Response:
    params = {
        "since": (since or "").strip(),
        "until": (until or "").strip(),
        "label": (label or "").strip()[:128],
        "user": (user or "").strip()[:64],
    }
    errors = []
    dates = {}
    for key, title in (("since", "From"), ("until", "To")):
        try:
            dates[key] = parse_date(params[key])
        except ValueError:
            errors.append(f"{title} date is not a valid date (YYYY-MM-DD); it was ignored.")
            dates[key] = None
            params[key] = ""
    d_since, d_until = dates["since"], dates["until"]
    number = parse_page(page)
    items, total = cases.list_case_summaries(
        db=db,
        scope=scope,
        limit=PAGE_SIZE,
        offset=(number - 1) * PAGE_SIZE,
        label=params["label"] or None,
        username=params["user"] or None,
        since=day_start(d_since) if d_since else None,
        until=day_after(d_until) if d_until else None,
    )
    offset = (number - 1) * PAGE_SIZE
    audit.record(
        audit.case_list_entry(
            dict(params), patient_key=False, offset=offset, rows=len(items), total=total
        ),
        db=db,
        ctx=request_context(request, ws.username),
    )
    view = CasesPage(
        errors=errors,
        items=items,
        labels=sorted({lb for e in state.registry.entries() for lb in e.manifest.labels}),
        params=params,
        pages=Pagination(number, PAGE_SIZE, total, params),
    )
    return render_page(request, view, ws=ws, status=422 if errors else 200)


def _case_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    scope: Scope,
    case_id: str,
    *,
    review_error: dict[str, str] | None = None,
    review_form: dict[str, dict[str, str]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    detail = cases.view_case(
        db=db, ctx=request_context(request, ws.username), case_id=case_id, scope=scope
    )
    page = case_page(detail, state.registry, review_error=review_error, review_form=review_form)
    return render_page(request, page, ws=ws, status=status)


@router.get("/cases/{case_id}", response_class=HTMLResponse)
def case_view(
    case_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    scope: WebScope,
) -> Response:
    return _case_page(request, db, state, ws, scope, case_id)


def _review_problem(verdict: str | None, correct_label: str | None, comment: str) -> str | None:
    if verdict not in ("agree", "disagree"):
        return "Choose Agree or Disagree."
    if verdict == "disagree" and not correct_label:
        return "When you disagree, choose the correct label."
    if len(comment) > 4000:
        return "The comment is longer than 4000 characters."
    return None


def _case_prediction(
    db: Session, scope: Scope | None, case_id: str, prediction_id: str
) -> Prediction:
    """The prediction of this case the user may see; a 404 page otherwise (a prediction of
    another case is not found either)."""
    try:
        pred = cases.get_prediction(db=db, prediction_id=prediction_id, scope=scope)
    except cases.NotFound:
        pred = None
    if pred is None or pred.case_id != case_id:
        raise PageError(404, "Prediction not found", "This prediction does not exist.")
    return pred


@router.post(
    "/cases/{case_id}/predictions/{prediction_id}/findings/{finding}/review",
    response_class=HTMLResponse,
)
def finding_review_submit(
    case_id: str,
    prediction_id: str,
    finding: int,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    scope: WebScope,
    verdict: FormStr = None,
    comment: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    """Accept or reject one stenosis of a prediction (the stenosis table's buttons)."""
    require_csrf(request, db, state, ws, csrf_token)
    pred = _case_prediction(db, scope, case_id, prediction_id)
    text = (comment or "").strip()
    problem = None
    if verdict not in ("accept", "reject"):
        problem = "Choose Accept or Reject."
    elif len(text) > 4000:
        problem = "The comment is longer than 4000 characters."
    if problem is None:
        try:
            cases.add_finding_review(
                db=db,
                ctx=request_context(request, ws.username),
                user=ws.user,
                prediction=pred,
                finding=finding,
                accept=verdict == "accept",
                comment=text or None,
            )
        except cases.NotFound:
            raise PageError(404, "Finding not found", "This finding does not exist.") from None
        return redirect(f"/cases/{case_id}#prediction-{prediction_id}")
    return _case_page(
        request, db, state, ws, scope, case_id, status=422, review_error={prediction_id: problem}
    )


@router.post("/cases/{case_id}/predictions/{prediction_id}/review", response_class=HTMLResponse)
def review_submit(
    case_id: str,
    prediction_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    scope: WebScope,
    verdict: FormStr = None,
    correct_label: FormStr = None,
    comment: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    pred = _case_prediction(db, scope, case_id, prediction_id)
    form = {
        "verdict": verdict or "",
        "correct_label": correct_label or "",
        "comment": (comment or "").strip(),
    }
    problem = _review_problem(verdict, correct_label, form["comment"])
    if problem is None:
        agree = verdict == "agree"
        try:
            cases.add_review(
                db=db,
                ctx=request_context(request, ws.username),
                user=ws.user,
                prediction=pred,
                agree=agree,
                correct_label=None if agree else correct_label,
                comment=form["comment"] or None,
            )
        except cases.InvalidReview as exc:
            problem = exc.detail
        else:
            return redirect(f"/cases/{case_id}#prediction-{prediction_id}")
    return _case_page(
        request,
        db,
        state,
        ws,
        scope,
        case_id,
        status=422,
        review_error={prediction_id: problem},
        review_form={prediction_id: form},
    )
