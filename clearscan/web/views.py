"""The server-rendered web UI: thin page handlers that parse the form, call the same services as
the API and render a template. `mount(app)` adds the pages, /static and the page error handlers.

Images are never served from /static: the pages point <img> tags at the authenticated API
(`/api/v1/images/{id}/preview.png`, `/api/v1/predictions/{id}/heatmap.png`,
`/api/v1/datasets/{id}/items/{idx}/image.png`), which accepts the session cookie for GET
requests."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from clearscan.audit import service as audit
from clearscan.auth import service as users
from clearscan.auth.models import Role
from clearscan.auth.schemas import UserCreate
from clearscan.cases import service as cases
from clearscan.cases.schemas import CaseDetail, CaseSummary
from clearscan.cases.workflow import PredictRejected, predict
from clearscan.datasets import service as datasets
from clearscan.datasets.importers import DatasetError
from clearscan.datasets.models import Dataset
from clearscan.datasets.schemas import DatasetDetail, SampleItem
from clearscan.deps import SESSION_COOKIE, SessionDep, StateDep, request_context
from clearscan.jobs import service as jobs
from clearscan.jobs.models import Job
from clearscan.registry import rollout
from clearscan.registry.models import ShadowResult
from clearscan.registry.schemas import ModelDetail, ModelVersionPublic
from clearscan.registry.service import ModelNotFound, RegistryError, version_key
from clearscan.state import AppState
from clearscan.training.evaluation import EVAL_KIND, EvalRequest, list_evaluations, resolve
from clearscan.training.runs import TRAIN_KIND, TrainRequest, check_request
from clearscan.training.schemas import TrainingRunPublic
from clearscan.web.forms import (
    LOGIN_CSRF_COOKIE,
    Pagination,
    check_login_csrf,
    day_after,
    day_start,
    new_login_csrf,
    parse_date,
    parse_page,
    safe_next,
)
from clearscan.web.present import image_panels, model_note
from clearscan.web.session import (
    AdminSession,
    ClinicianSession,
    LoginRequired,
    PageError,
    WebSession,
    WebSessionDep,
    require_csrf,
)
from clearscan.web.templating import STATIC_DIR, render

router = APIRouter(include_in_schema=False)
CASES_PAGE_SIZE = 20
AUDIT_PAGE_SIZE = 50
DATASETS_PAGE_SIZE = 20
KNOWN_ACTIONS = [
    "access.denied",
    "auth.login",
    "auth.logout",
    "case.create",
    "case.view",
    "dataset.import",
    "evaluation.submit",
    "features.upload",
    "image.upload",
    "image.view",
    "model.activate",
    "model.import",
    "model.remove",
    "model.rollback",
    "model.rollout",
    "model.unavailable",
    "predict",
    "prediction.create",
    "review.create",
    "training.cancel",
    "training.submit",
    "user.create",
    "user.update",
]
FormStr = Annotated[str | None, Form()]
QueryStr = Annotated[str | None, Query()]


def _landing(role: str) -> str:
    return "/cases" if role == Role.viewer.value else "/analyze"


def _secure(request: Request, state: AppState) -> bool:
    mode = state.settings.secure_cookies
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# --- sign in / sign out -----------------------------------------------------------------------


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
    response = render(
        request,
        "login.html",
        status=status,
        headers=headers,
        login_csrf=token,
        next_url=next_url or "",
        username=username,
        error=error,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request, state),
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_form(
    request: Request,
    db: SessionDep,
    state: StateDep,
    next_url: Annotated[str | None, Query(alias="next")] = None,
) -> Response:
    target = safe_next(next_url)
    token = request.cookies.get(SESSION_COOKIE)
    found = users.resolve_session(db=db, token=token) if token else None
    if found is not None:
        return _redirect(target or _landing(found[0].role))
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
    if not check_login_csrf(state.secret, request.cookies.get(LOGIN_CSRF_COOKIE), csrf_token):
        return _login_page(
            request,
            state,
            next_url=target,
            username=name,
            status=403,
            error="The sign-in form expired or could not be verified. Please try again.",
        )
    try:
        user = users.login(
            db=db,
            ctx=request_context(request),
            limiter=state.limiter,
            username=name,
            password=password or "",
            via="web",
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
    if previous := request.cookies.get(SESSION_COOKIE):
        users.end_session(db=db, token=previous)  # a new sign-in replaces the old session
    minutes = state.settings.session_minutes
    token, _ = users.start_session(db=db, user=user, minutes=minutes)
    db.commit()
    if target is None or target.startswith(("/login", "/logout")):
        target = _landing(user.role)
    response = _redirect(target)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=minutes * 60,
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure(request, state),
    )
    response.delete_cookie(
        LOGIN_CSRF_COOKIE,
        path="/login",
        httponly=True,
        samesite="strict",
        secure=_secure(request, state),
    )
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
    users.end_session(db=db, token=ws.token)
    audit.append(
        db,
        request_context(request, ws.username),
        audit.Entry(
            "auth.logout", object_type="user", object_id=str(ws.user.id), details={"via": "web"}
        ),
    )
    db.commit()
    response = _redirect("/login")
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request, state)
    )
    return response


@router.get("/")
def home(ws: WebSessionDep) -> Response:
    return _redirect(_landing(ws.role))


# --- new analysis -----------------------------------------------------------------------------


def _analyze_page(
    request: Request,
    state: AppState,
    ws: WebSession,
    *,
    values: dict[str, Any] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    entries = state.registry.entries()
    values = values or {
        "model": state.settings.default_model,
        "explain": True,
        "patient_ref": "",
        "note": "",
    }
    notes = {e.manifest.name: model_note(e) for e in entries}
    return render(
        request,
        "analyze.html",
        ws=ws,
        status=status,
        error=error,
        entries=entries,
        notes=notes,
        values=values,
        settings=state.settings,
    )


@router.get("/analyze", response_class=HTMLResponse)
def analyze_form(request: Request, state: StateDep, ws: ClinicianSession) -> Response:
    return _analyze_page(request, state, ws)


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
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    wants_explain = (explain or "").lower() in ("on", "true", "1", "yes")
    ref, text = (patient_ref or "").strip(), (note or "").strip()
    values = {
        "model": model or state.settings.default_model,
        "explain": wants_explain,
        "patient_ref": ref,
        "note": text,
    }
    # A browser sends one empty part when no file is chosen.
    uploads = [f.file.read() for f in file or [] if f.filename or f.size]
    problem = None
    if not uploads:
        problem = "Choose at least one image file."
    elif len(ref) > 128:
        problem = "The patient reference is longer than 128 characters."
    elif len(text) > 4000:
        problem = "The note is longer than 4000 characters."
    if problem:
        return _analyze_page(request, state, ws, values=values, error=problem, status=422)
    try:
        case, _ = predict(
            state=state,
            db=db,
            ctx=request_context(request, ws.username),
            user=ws.user,
            uploads=uploads,
            model_name=model or None,
            explain=wants_explain,
            patient_ref=ref or None,
            note=text or None,
        )
    except PredictRejected as exc:
        return _analyze_page(
            request, state, ws, values=values, error=exc.detail, status=exc.status_code
        )
    return _redirect(f"/cases/{case.id}")


# --- cases ------------------------------------------------------------------------------------


@router.get("/cases", response_class=HTMLResponse)
def cases_page(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
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
    rows, total = cases.list_cases(
        db=db,
        limit=CASES_PAGE_SIZE,
        offset=(number - 1) * CASES_PAGE_SIZE,
        label=params["label"] or None,
        username=params["user"] or None,
        since=day_start(d_since) if d_since else None,
        until=day_after(d_until) if d_until else None,
    )
    names = cases.usernames(db=db, ids={c.created_by_id for c in rows})
    labels = sorted({lb for e in state.registry.entries() for lb in e.manifest.labels})
    return render(
        request,
        "cases.html",
        ws=ws,
        status=422 if errors else 200,
        errors=errors,
        items=[CaseSummary.of(c, names) for c in rows],
        labels=labels,
        params=params,
        pages=Pagination(number, CASES_PAGE_SIZE, total, params),
    )


def _case_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    case_id: str,
    *,
    review_error: dict[str, str] | None = None,
    review_form: dict[str, dict[str, str]] | None = None,
    status: int = 200,
) -> HTMLResponse:
    try:
        case = cases.get_case(db=db, case_id=case_id)
    except cases.NotFound:
        raise PageError(404, "Case not found", "This case does not exist.", ws) from None
    ids = {case.created_by_id} | {
        r.user_id for im in case.images for p in im.predictions for r in p.reviews
    }
    detail = CaseDetail.of_detail(case, cases.usernames(db=db, ids=ids))
    audit.record(
        db,
        request_context(request, ws.username),
        audit.Entry("case.view", object_type="case", object_id=case.id),
    )
    labels = sorted({lb for im in detail.images for p in im.predictions for lb in p.labels})
    return render(
        request,
        "case.html",
        ws=ws,
        status=status,
        case=detail,
        panels=image_panels(detail.images, state.registry),
        labels=labels,
        review_error=review_error or {},
        review_form=review_form or {},
    )


@router.get("/cases/{case_id}", response_class=HTMLResponse)
def case_page(
    case_id: str, request: Request, db: SessionDep, state: StateDep, ws: WebSessionDep
) -> Response:
    return _case_page(request, db, state, ws, case_id)


@router.post("/cases/{case_id}/predictions/{prediction_id}/review", response_class=HTMLResponse)
def review_submit(
    case_id: str,
    prediction_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: ClinicianSession,
    verdict: FormStr = None,
    correct_label: FormStr = None,
    comment: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        pred = cases.get_prediction(db=db, prediction_id=prediction_id)
    except cases.NotFound:
        pred = None
    if pred is None or pred.case_id != case_id:
        raise PageError(404, "Prediction not found", "This prediction does not exist.", ws)
    form = {
        "verdict": verdict or "",
        "correct_label": correct_label or "",
        "comment": (comment or "").strip(),
    }
    agree = verdict == "agree"
    if verdict not in ("agree", "disagree"):
        problem = "Choose Agree or Disagree."
    elif not agree and not correct_label:
        problem = "When you disagree, choose the correct label."
    elif len(form["comment"]) > 4000:
        problem = "The comment is longer than 4000 characters."
    else:
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
            return _redirect(f"/cases/{case_id}#prediction-{prediction_id}")
    return _case_page(
        request,
        db,
        state,
        ws,
        case_id,
        status=422,
        review_error={prediction_id: problem},
        review_form={prediction_id: form},
    )


# --- models -----------------------------------------------------------------------------------


@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, state: StateDep, ws: WebSessionDep) -> Response:
    reg = state.registry
    entries = reg.entries(include_inactive=True)
    return render(
        request,
        "models.html",
        ws=ws,
        models=[ModelDetail.of_detail(e, reg.status(e)) for e in entries],
        problems=state.registry.problems if ws.is_admin else [],
        default_model=state.settings.default_model,
    )


_MODEL_NOTICES = {
    "activated": "Version {active} is now the active version.",
    "rolled-back": "Rolled back: version {active} is the active version again.",
    "rollout": "Roll-out settings saved.",
    "evaluate": "Evaluation queued: it runs in the background. Reload this page to see its "
    "result in the Evaluations list.",
}


def _shadow_report(
    db: Session, state: AppState, name: str, shadow: str | None
) -> dict[str, object] | None:
    """The shadow report of the shadow version, or of the last one that left results."""
    version = (
        shadow
        or db.execute(
            select(ShadowResult.shadow_version)
            .where(ShadowResult.model_name == name)
            .order_by(ShadowResult.id.desc())
            .limit(1)
        ).scalar_one_or_none()
    )
    if version is None:
        return None
    try:
        return rollout.shadow_report(db=db, registry=state.registry, name=name, version=version)
    except RegistryError:
        return None


_EVAL_SPLITS = ("train", "val", "test")
_EVAL_LIMIT = 200  # evaluations listed on a model page (newest first)
# Side-by-side rows: metric key, title, whether higher is better.
_EVAL_ROWS = (
    ("accuracy", "Accuracy", True),
    ("balanced_accuracy", "Balanced accuracy", True),
    ("auc", "AUC", True),
    ("sensitivity", "Sensitivity", True),
    ("specificity", "Specificity", True),
    ("ece", "ECE (calibration error)", False),
)


def _eval_value(result: dict[str, Any], key: str) -> float | None:
    if key == "ece":
        cal = result.get("calibration")
        return _finite(cal.get("ece")) if isinstance(cal, dict) else None
    metrics = result.get("metrics")
    return _finite(metrics.get(key)) if isinstance(metrics, dict) else None


def _eval_interval(result: dict[str, Any], key: str) -> str | None:
    """`[lo, hi]` of the metric's 95% interval, or None."""
    ci = result.get("ci95")
    pair = ci.get(key) if isinstance(ci, dict) else None
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        return None
    lo, hi = _finite(pair[0]), _finite(pair[1])
    return None if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def _eval_metric(result: dict[str, Any], key: str) -> dict[str, str | None]:
    return {"value": _fixed3(_eval_value(result, key)), "ci": _eval_interval(result, key)}


def _eval_result(job: Job) -> dict[str, Any] | None:
    return job.result if job.status == "succeeded" and isinstance(job.result, dict) else None


def _eval_progress(job: Job) -> str:
    if job.status == "queued":
        return "waiting for the worker"
    if job.status != "running":
        return ""
    p = job.progress or {}
    done, total = _int(p.get("done")), _int(p.get("total"))
    stage = str(p.get("stage") or "starting")
    return f"{stage} {done}/{total}" if done is not None and total else stage


def _evaluation_rows(db: Session, evals: list[Job]) -> list[dict[str, Any]]:
    facts = _dataset_facts(db, {str(j.params.get("dataset", "")) for j in evals})
    rows = []
    for job in evals:
        r = _eval_result(job)
        ref = str(job.params.get("dataset", ""))
        ds = r.get("dataset") if r else None
        ds_name = ds.get("name") if isinstance(ds, dict) else None
        rows.append(
            {
                "id": job.id,
                "version": str(job.params.get("model", "")).partition(":")[2],
                "dataset": str(ds_name or facts.get(ref, {}).get("name") or ref),
                "split": str(job.params.get("split", "")),
                "n": _int(r.get("n")) if r else None,
                "accuracy": _eval_metric(r, "accuracy") if r else None,
                "auc": _eval_metric(r, "auc") if r else None,
                "ece": _fixed3(_eval_value(r, "ece")) if r else None,
                "status": job.status,
                "error": job.error,
                "progress": _eval_progress(job),
                "created_at": job.created_at,
                "created_by": job.created_by,
                "report": f"/api/v1/evaluations/{job.id}/report.html" if r else None,
            }
        )
    return rows


def _side_by_side(evals: list[Job]) -> list[dict[str, Any]]:
    """Per (dataset hash, split) evaluated for two or more versions: the metrics of each
    version's latest succeeded evaluation, the better value of each row marked."""
    groups: dict[tuple[str, str], dict[str, tuple[Job, dict[str, Any]]]] = {}
    for job in evals:  # newest first: the first one per version is its latest
        r = _eval_result(job)
        model, ds = (r.get("model"), r.get("dataset")) if r else (None, None)
        if r is None or not isinstance(model, dict) or not isinstance(ds, dict):
            continue
        group = (str(ds.get("hash", "")), str(r.get("split", "")))
        groups.setdefault(group, {}).setdefault(str(model.get("version", "")), (job, r))
    tables = []
    for (ds_hash, split), per in groups.items():
        if len(per) < 2:
            continue
        versions = sorted(per, key=lambda v: (version_key(v), v))
        rows = []
        for key, title, higher in _EVAL_ROWS:
            values = [_eval_value(per[v][1], key) for v in versions]
            present = [x for x in values if x is not None]
            if not present:
                continue
            best = max(present) if higher else min(present)
            marked = len(set(present)) > 1  # a tie everywhere marks nothing
            cells = [
                {
                    "version": v,
                    "value": _fixed3(x),
                    "ci": _eval_interval(per[v][1], key) if key != "ece" else None,
                    "best": marked and x == best,
                }
                for v, x in zip(versions, values, strict=True)
            ]
            rows.append({"key": key, "title": title, "higher": higher, "cells": cells})
        named = per[versions[0]][1].get("dataset")
        tables.append(
            {
                "dataset": str(named.get("name") or "") if isinstance(named, dict) else "",
                "hash": ds_hash,
                "split": split,
                "n": sorted({n for _, r in per.values() if (n := _int(r.get("n"))) is not None}),
                "versions": [{"version": v, "id": per[v][0].id} for v in versions],
                "rows": rows,
            }
        )
    return tables


def _eval_choices(db: Session) -> list[dict[str, Any]]:
    rows, _ = datasets.list_datasets(db, limit=1000, offset=0)
    return [
        {"name": d.name, "kind": d.kind, "n_items": d.n_items, "splits": list(d.counts or {})}
        for d in rows
    ]


def _model_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    name: str,
    *,
    error: str | None = None,
    notice: str | None = None,
    rollout_form: dict[str, str] | None = None,
    eval_form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    try:
        reg = state.registry
        entry = reg.describe(name)
        versions = [ModelVersionPublic.of(e, reg.status(e)) for e in reg.versions(name)]
    except ModelNotFound:
        raise PageError(404, "Model not found", "No model of this name is installed.", ws) from None
    plan: dict[str, Any] | None = None
    report = None
    if ws.is_admin and reg.status(entry) != "inactive":
        plan = state.registry.rollout(name)
        canary, shadow = plan.get("canary"), plan.get("shadow")
        if rollout_form is None:
            rollout_form = {
                "canary_version": canary["version"] if isinstance(canary, dict) else "",
                "canary_percent": str(canary["percent"]) if isinstance(canary, dict) else "",
                "shadow_version": shadow["version"] if isinstance(shadow, dict) else "",
            }
        report = _shadow_report(
            db, state, name, shadow["version"] if isinstance(shadow, dict) else None
        )
    evals, evals_total = list_evaluations(db, model=name, limit=_EVAL_LIMIT)
    return render(
        request,
        "model.html",
        ws=ws,
        status=status,
        m=ModelDetail.of_detail(entry, reg.status(entry)),
        manifest=entry.manifest,
        note=model_note(entry),
        cam_error=entry.cam_error,
        versions=versions,
        plan=plan,
        report=report,
        rollout_form=rollout_form or {},
        candidates=[v.version for v in versions if v.status == "inactive"],
        evaluations=_evaluation_rows(db, evals),
        evaluations_total=evals_total,
        comparisons=_side_by_side(evals),
        eval_versions=[v.version for v in versions if v.status != "unavailable"],
        eval_datasets=_eval_choices(db) if ws.is_admin else [],
        eval_splits=_EVAL_SPLITS,
        eval_form=eval_form or {"version": entry.manifest.version, "dataset": "", "split": "test"},
        error=error,
        notice=notice,
    )


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    done: QueryStr = None,
) -> Response:
    notice = None
    if done in _MODEL_NOTICES:
        try:
            active = state.registry.get(name).manifest.version
        except RegistryError:
            active = ""
        notice = _MODEL_NOTICES[done].format(active=active)
    return _model_page(request, db, state, ws, name, notice=notice)


def _registry_failed(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    name: str,
    exc: RegistryError,
    rollout_form: dict[str, str] | None = None,
) -> HTMLResponse:
    db.rollback()
    message = exc.detail[:1].upper() + exc.detail[1:]
    return _model_page(
        request,
        db,
        state,
        ws,
        name,
        error=message,
        rollout_form=rollout_form,
        status=exc.status_code,
    )


@router.post("/models/{name}/versions/{version}/activate", response_class=HTMLResponse)
def model_activate(
    name: str,
    version: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        rollout.activate(
            db=db,
            ctx=request_context(request, ws.username),
            registry=state.registry,
            name=name,
            version=version,
        )
    except RegistryError as exc:
        return _registry_failed(request, db, state, ws, name, exc)
    return _redirect(f"/models/{name}?done=activated")


@router.post("/models/{name}/rollback", response_class=HTMLResponse)
def model_rollback(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        rollout.rollback(
            db=db, ctx=request_context(request, ws.username), registry=state.registry, name=name
        )
    except RegistryError as exc:
        return _registry_failed(request, db, state, ws, name, exc)
    return _redirect(f"/models/{name}?done=rolled-back")


@router.post("/models/{name}/rollout", response_class=HTMLResponse)
def model_rollout(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    canary_version: FormStr = None,
    canary_percent: FormStr = None,
    shadow_version: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    form = {
        "canary_version": (canary_version or "").strip()[:64],
        "canary_percent": (canary_percent or "").strip()[:16],
        "shadow_version": (shadow_version or "").strip()[:64],
    }
    canary: tuple[str, int] | None = None
    if form["canary_version"]:
        text = form["canary_percent"]
        percent = int(text) if text.isdigit() else -1
        if not 0 <= percent <= 100:
            return _model_page(
                request,
                db,
                state,
                ws,
                name,
                error="Canary percent: give a whole number from 0 to 100.",
                rollout_form=form,
                status=422,
            )
        canary = (form["canary_version"], percent)
    try:
        rollout.set_rollout(
            db=db,
            ctx=request_context(request, ws.username),
            registry=state.registry,
            name=name,
            canary=canary,
            shadow=form["shadow_version"] or None,
        )
    except RegistryError as exc:
        return _registry_failed(request, db, state, ws, name, exc, rollout_form=form)
    return _redirect(f"/models/{name}?done=rollout")


def _eval_problem(form: dict[str, str]) -> str | None:
    """What is wrong with the evaluation form (resolve checks the rest)."""
    if not form["version"]:
        return "Choose a version to evaluate."
    if not form["dataset"]:
        return "Choose a dataset."
    if len(form["version"]) > 64 or len(form["dataset"]) > 64:
        return "Version and dataset are at most 64 characters each."
    if form["split"] not in _EVAL_SPLITS:
        return "Split: choose train, val or test."
    return None


@router.post("/models/{name}/evaluations", response_class=HTMLResponse)
def model_evaluate(
    name: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    version: FormStr = None,
    dataset: FormStr = None,
    split: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = {"version": version, "dataset": dataset, "split": split}
    form = {k: (v or "").strip()[:200] for k, v in given.items()}
    form["split"] = form["split"] or "test"
    problem = _eval_problem(form)
    if problem:
        return _model_page(request, db, state, ws, name, error=problem, eval_form=form, status=422)
    req = EvalRequest(f"{name}:{form['version']}", form["dataset"], form["split"])
    try:
        entry, ds, _ = resolve(db, state.registry, req)
    except jobs.JobError as exc:
        db.rollback()
        message = exc.detail[:1].upper() + exc.detail[1:]
        return _model_page(
            request, db, state, ws, name, error=message, eval_form=form, status=exc.status_code
        )
    params = {**req.to_params(), "model": entry.manifest.ref}  # the version evaluated, pinned
    jobs.submit_audited(
        db,
        request_context(request, ws.username),
        kind=EVAL_KIND,
        action="evaluation.submit",
        params=params,
        details={**params, "dataset_hash": ds.content_hash, "via": "web"},
    )
    db.commit()
    if state.jobs is not None:
        state.jobs.notify()
    return _redirect(f"/models/{name}?done=evaluate")


# --- datasets ---------------------------------------------------------------------------------

_DATASET_FIELDS = {  # form field -> (title, longest accepted value)
    "name": ("Name", 64),
    "target": ("Target column", 200),
    "time_column": ("Time column", 200),
    "group_column": ("Group column", 200),
    "labels": ("Class names", 4000),
    "license": ("Licence and attribution", 2000),
}
_SPLIT_FACTS = {"validation": "Validation split", "fraction": "Share of train", "seed": "Seed"}
_BAR_SLOTS = 8  # colours of the class-balance bars (.seg-c0 .. .seg-c7)


def _datasets_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    *,
    page: int = 1,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    rows, total = datasets.list_datasets(
        db, limit=DATASETS_PAGE_SIZE, offset=(page - 1) * DATASETS_PAGE_SIZE
    )
    return render(
        request,
        "datasets.html",
        ws=ws,
        status=status,
        items=rows,
        pages=Pagination(page, DATASETS_PAGE_SIZE, total, {}),
        error=error,
        form=form or dict.fromkeys(_DATASET_FIELDS, ""),
        max_upload_mb=state.settings.max_dataset_upload_mb,
    )


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    page: QueryStr = None,
) -> Response:
    return _datasets_page(request, db, state, ws, page=parse_page(page))


def _import_problem(file: UploadFile | None, form: dict[str, str]) -> str | None:
    # A browser sends one empty part when no file is chosen.
    if file is None or not (file.filename or file.size):
        return "Choose a dataset file: a .zip of class folders, a MedMNIST .npz or a CSV table."
    if file.size == 0:
        return "The chosen file is empty."
    if not form["name"]:
        return "Give the dataset a name."
    for key, (title, longest) in _DATASET_FIELDS.items():
        if len(form[key]) > longest:
            return f"{title} is longer than {longest} characters."
    return None


@router.post("/datasets", response_class=HTMLResponse)
def datasets_import(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    file: Annotated[UploadFile | None, File()] = None,
    name: FormStr = None,
    target: FormStr = None,
    time_column: FormStr = None,
    group_column: FormStr = None,
    labels: FormStr = None,
    license: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = (name, target, time_column, group_column, labels, license)
    form = {k: (v or "").strip() for k, v in zip(_DATASET_FIELDS, given, strict=True)}
    problem = _import_problem(file, form)
    if problem or file is None:
        return _datasets_page(request, db, state, ws, error=problem, form=form, status=422)
    options = datasets.ImportOptions(
        name=form["name"],
        target=form["target"] or None,
        time_column=form["time_column"] or None,
        group_column=form["group_column"] or None,
        labels=[x.strip() for x in form["labels"].split(",") if x.strip()] or None,
        license=form["license"] or None,
    )
    try:
        ds = datasets.import_upload(
            db=db,
            blobs=state.blobs,
            ctx=request_context(request, ws.username),
            upload=file.file,
            tmp_dir=state.settings.data_dir,
            options=options,
            limits=state.limits,
            max_bytes=int(state.settings.max_dataset_upload_mb * 2**20),
        )
    except DatasetError as exc:
        db.rollback()
        message = exc.detail[:1].upper() + exc.detail[1:]
        return _datasets_page(
            request, db, state, ws, error=message, form=form, status=exc.status_code
        )
    return _redirect(f"/datasets/{ds.id}")


def _class_balance(ds: Dataset) -> dict[str, Any]:
    """Per split: the count of each class, the total and the bar segments (x, width in %)."""
    classes = list(ds.classes)
    rows: list[dict[str, Any]] = []
    for split, per in ds.counts.items():
        counts = [int(per.get(c, 0)) for c in classes]
        total = sum(counts)
        segments: list[dict[str, Any]] = []
        x = 0.0
        for i, (label, n) in enumerate(zip(classes, counts, strict=True)):
            if n and total:
                width = 100 * n / total
                segments.append(
                    {
                        "label": label,
                        "n": n,
                        "share": n / total,
                        "slot": i % _BAR_SLOTS,
                        "x": f"{x:.3f}",
                        "width": f"{width:.3f}",
                    }
                )
                x += width
        rows.append({"split": split, "counts": counts, "total": total, "segments": segments})
    totals = [sum(r["counts"][i] for r in rows) for i in range(len(classes))]
    return {
        "classes": [{"label": c, "slot": i % _BAR_SLOTS} for i, c in enumerate(classes)],
        "rows": rows,
        "totals": totals,
        "total": sum(totals),
    }


def _number(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def _column_rows(info: dict[str, Any]) -> list[dict[str, Any]]:
    roles = {
        info.get("target"): "target",
        info.get("time_column"): "time",
        info.get("group_column"): "group",
        "split": "split",
    }
    out = []
    for col in info.get("columns") or []:
        values = col.get("values")
        out.append(
            {
                "name": col.get("name", ""),
                "role": roles.get(col.get("name")),
                "type": col.get("type", ""),
                "missing": col.get("missing", 0),
                "distinct": col.get("distinct", ""),
                "stats": [_number(col.get(k)) for k in ("min", "max", "mean", "std")]
                if "mean" in col
                else None,
                "values": ", ".join(str(v) for v in values) if values else "",
                "more_values": bool(values)
                and isinstance(col.get("distinct"), int)
                and col["distinct"] > len(values),
            }
        )
    return out


def _split_facts(recipe: object) -> list[tuple[str, str]]:
    if not isinstance(recipe, dict):
        return []
    facts = []
    for key, value in recipe.items():
        text = f"{value:.0%}" if key == "fraction" and isinstance(value, float) else str(value)
        facts.append((_SPLIT_FACTS.get(key, key.replace("_", " ").capitalize()), text))
    return facts


@router.get("/datasets/{ref}", response_class=HTMLResponse)
def dataset_page(
    ref: str, request: Request, db: SessionDep, state: StateDep, ws: WebSessionDep
) -> Response:
    try:
        ds = datasets.get(db, ref)
    except DatasetError:
        raise PageError(
            404, "Dataset not found", "No dataset with this id or name exists.", ws
        ) from None
    per_class = 4 if len(ds.classes) <= 10 else 2
    items = datasets.samples(db, ds, per_class=per_class) if ds.kind == "images" else []
    detail = DatasetDetail.of_detail(ds, items)
    groups: dict[tuple[str, str], list[SampleItem]] = {}
    for s in detail.samples:
        groups.setdefault((s.split, s.label), []).append(s)
    return render(
        request,
        "dataset.html",
        ws=ws,
        ds=detail,
        info=detail.info,
        balance=_class_balance(ds),
        split_facts=_split_facts(detail.info.get("splits")),
        sample_groups=[{"split": k[0], "label": k[1], "items": v} for k, v in groups.items()],
        columns=_column_rows(detail.info) if ds.kind == "table" else [],
        features=_features_preview(db, state, ds) if ds.kind == "table" else None,
    )


def _features_preview(db: Session, state: AppState, ds: Any) -> dict[str, Any]:
    """The first rows of the feature table a training run would use, and the latest feature
    importance; {"error": ...} when the table cannot be turned into features."""
    from clearscan.training.tabular import TabularError, preview

    try:
        return preview(db, state.blobs, ds, limit=10)
    except TabularError as exc:
        return {"error": str(exc)}


# --- training runs ----------------------------------------------------------------------------

TRAINING_PAGE_SIZE = 20
_LIVE_STATUSES = ("queued", "running")
_SEED_MAX = 2**31 - 1
# The loss / validation-AUC chart, in SVG user units. static/training.js redraws it with the same
# geometry (read from the <svg>'s data-* attributes) while a run trains: keep the two in step.
CHART = {"width": 640, "height": 240, "left": 52, "right": 588, "top": 14, "bottom": 204}
_CHART_MARKERS = 60  # epoch markers (with a tooltip each) are drawn up to this many epochs
_NICE = (1.0, 1.2, 1.6, 2.0, 2.4, 3.2, 4.0, 6.0, 8.0, 10.0)  # quarters of these read well
_TICK_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_METRIC_TITLES = {
    "n": "Validation items",
    "accuracy": "Accuracy",
    "auc": "AUC",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
}
_RUN_NOTICES = {
    "cancelled": "Training run cancelled; nothing was registered.",
    "cancelled-queued": "Training run cancelled before it started; nothing was registered.",
    "cancel-requested": "Cancellation requested: the run stops at its next progress report "
    "and registers nothing.",
}
_RECIPE_FACTS = (
    ("size", "Input size (px)"),
    ("epochs", "Epochs (at most)"),
    ("batch_size", "Batch size"),
    ("lr", "Learning rate"),
    ("weight_decay", "Weight decay"),
    ("patience", "Early-stopping patience"),
    ("seed", "Seed"),
)


def _recipe_choices() -> dict[str, list[str]]:
    """Recipe names by dataset kind (imported here: the trainers import torch / scikit-learn)."""
    from clearscan.training.recipes import RECIPES
    from clearscan.training.tabular import TABULAR_RECIPES

    return {"images": list(RECIPES), "table": list(TABULAR_RECIPES)}


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _duration(seconds: object) -> str:
    """`45 s`, `3 min 05 s`, `1 h 02 min` (training.js formats the same way)."""
    s = _finite(seconds)
    if s is None or s < 0:
        return "—"
    total = round(s)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60} min {total % 60:02d} s"
    return f"{total // 3600} h {total % 3600 // 60:02d} min"


def _fixed3(value: object) -> str:
    v = _finite(value)
    return "—" if v is None else f"{v:.3f}"


def _nice_ceiling(value: float) -> float:
    if not value > 0 or not math.isfinite(value):
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for m in _NICE:
        if value <= m * base * (1 + 1e-9):
            return m * base
    return 10 * base  # pragma: no cover - _NICE ends at 10


def _tick_label(value: float) -> str:
    return f"{value:.3g}"


def _epoch_ticks(span: int) -> list[int]:
    if span <= 1:
        return [1]
    step = next((s for s in _TICK_STEPS if s >= (span - 1) / 5), _TICK_STEPS[-1])
    # a tick closer than 6% of the axis to the last one would crowd its label
    middle = [t for t in range(step, span, step) if t > 1 and (span - t) / (span - 1) >= 0.06]
    return [1, *middle, span]


def _chart(history: list[dict[str, Any]], span: int, best_epoch: int | None) -> dict[str, Any]:
    """SVG geometry of the loss (left axis) and validation AUC (right axis, 0-1) per epoch."""
    left, right, top, bottom = CHART["left"], CHART["right"], CHART["top"], CHART["bottom"]
    rows = [h for h in history if _int(h.get("epoch")) is not None]
    span = max([span, 1, *(int(h["epoch"]) for h in rows)])
    losses = [v for h in rows if (v := _finite(h.get("loss"))) is not None]
    loss_max = _nice_ceiling(max(losses) * 1.05) if losses else 1.0

    def x_of(epoch: int) -> float:
        if span <= 1:
            return (left + right) / 2
        return left + (right - left) * (epoch - 1) / (span - 1)

    def y_of(fraction: float) -> float:
        return bottom - max(0.0, min(1.0, fraction)) * (bottom - top)

    def fmt(v: float) -> str:
        return f"{v:.1f}"

    loss_points, auc_points, markers = [], [], []
    for h in rows:
        x = x_of(int(h["epoch"]))
        loss, auc = _finite(h.get("loss")), _finite(h.get("val_auc"))
        marker: dict[str, Any] = {"x": fmt(x), "loss_y": None, "auc_y": None}
        if loss is not None:
            marker["loss_y"] = fmt(y_of(loss / loss_max))
            loss_points.append(f"{fmt(x)},{marker['loss_y']}")
        if auc is not None:
            marker["auc_y"] = fmt(y_of(auc))
            auc_points.append(f"{fmt(x)},{marker['auc_y']}")
        marker["title"] = f"Epoch {h['epoch']}: loss {_fixed3(loss)}, validation AUC {_fixed3(auc)}"
        markers.append(marker)
    grid = [
        {
            "y": fmt(y_of(q / 4)),
            "loss": _tick_label(loss_max * q / 4),
            "auc": _tick_label(q / 4),
        }
        for q in range(5)
    ]
    best = None
    if best_epoch is not None and any(int(h["epoch"]) == best_epoch for h in rows):
        best = {"x": fmt(x_of(best_epoch)), "epoch": best_epoch}
    return {
        "geometry": CHART,
        "span": span,
        "empty": not rows,
        "loss_points": " ".join(loss_points),
        "auc_points": " ".join(auc_points),
        "markers": markers if len(markers) <= _CHART_MARKERS else [],
        "grid": grid,
        "xticks": [{"x": fmt(x_of(t)), "label": str(t)} for t in _epoch_ticks(span)],
        "best": best,
    }


def _dataset_facts(db: Session, refs: set[str]) -> dict[str, dict[str, Any]]:
    """Dataset id or name -> {name, kind, classes} for the runs shown (runs may name either)."""
    if not refs:
        return {}
    rows = db.execute(
        select(Dataset.id, Dataset.name, Dataset.kind, Dataset.classes).where(
            or_(Dataset.id.in_(refs), Dataset.name.in_(refs))
        )
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        facts = {"name": r.name, "kind": r.kind, "classes": list(r.classes or [])}
        out[r.id] = out[r.name] = facts
    return out


def _recipe_of(run: TrainingRunPublic) -> str:
    recipe = (run.result or {}).get("recipe")
    if isinstance(recipe, dict) and recipe.get("name"):
        return str(recipe["name"])
    if isinstance(recipe, str) and recipe:
        return recipe
    asked = run.params.get("recipe") or run.progress.get("recipe")
    return str(asked) if asked else "default"


def _progress_text(run: TrainingRunPublic) -> str:
    """One line for the run list: where the run is (or where it stopped)."""
    p = run.progress
    if run.status == "queued":
        return "waiting for the worker"
    if run.status == "succeeded":
        n = _int((run.result or {}).get("epochs_run"))
        return f"done · {n} epoch{'s' if n != 1 else ''}" if n else "done"
    epoch, epochs = _int(p.get("epoch")), _int(p.get("epochs"))
    step, steps = _int(p.get("step")), _int(p.get("steps"))
    if epoch and epochs:
        text = f"epoch {epoch}/{epochs}"
    elif step and steps:
        text = f"{p.get('stage') or 'step'} ({step}/{steps})"
    else:
        text = str(p.get("stage") or "")
    if run.status == "running":
        return text or "starting"
    return f"stopped at {text}" if text else "—"


def _best_auc(run: TrainingRunPublic) -> object:
    best = run.progress.get("best_val_auc")
    if _finite(best) is not None:
        return best
    metrics = (run.result or {}).get("val_metrics")
    return metrics.get("auc") if isinstance(metrics, dict) else None


def _elapsed(run: TrainingRunPublic, now: datetime) -> float | None:
    """Wall time since the run started (to its end), as training.js computes it."""
    if run.started_at is None:
        return None
    return ((run.finished_at or now) - run.started_at).total_seconds()


def _live(run: TrainingRunPublic, now: datetime) -> dict[str, Any]:
    """The numbers static/training.js keeps up to date (data-field -> text), and the bar."""
    p = run.progress
    epoch, epochs = _int(p.get("epoch")), _int(p.get("epochs"))
    step, steps = _int(p.get("step")), _int(p.get("steps"))
    stage = p.get("stage") or ("waiting for the worker" if run.status == "queued" else "")
    if run.status == "succeeded":
        stage = "finished"
    elif run.status in ("failed", "cancelled"):
        stage = f"{run.status}{f' while {stage}' if stage else ''}"
    bar: dict[str, int] | None = None  # None: an indeterminate bar (queued, loading)
    if epochs:
        bar = {"value": min(epoch or 0, epochs), "max": epochs}
    elif steps:
        bar = {"value": min(step or 0, steps), "max": steps}
    if run.status == "succeeded":
        bar = {"value": 1, "max": 1}
    best_epoch = _int(p.get("best_epoch"))
    best = _fixed3(p.get("best_val_auc"))
    return {
        "stage": stage or "—",
        "epoch": f"{epoch} / {epochs}" if epochs else (f"{step} / {steps}" if steps else "—"),
        "loss": _fixed3(p.get("loss")),
        "val_auc": _fixed3(p.get("val_auc")),
        "val_acc": _fixed3(p.get("val_acc")),
        "best": f"{best} (epoch {best_epoch})" if best != "—" and best_epoch else best,
        "elapsed": _duration(_elapsed(run, now)),
        "eta": _duration(p.get("eta_s")) if run.status == "running" else "—",
        "bar": bar,
        "steps": bool(steps and not epochs),
    }


def _result_view(
    state: AppState, run: TrainingRunPublic, classes: list[str]
) -> dict[str, Any] | None:
    r = run.result
    if run.status != "succeeded" or not r:
        return None
    name, version = str(r.get("name") or ""), str(r.get("version") or "")
    model_status = None
    if name and version:
        try:
            model_status = state.registry.status(state.registry.version(name, version))
        except RegistryError:
            model_status = None
    metrics = r.get("val_metrics")
    rows = [
        (_METRIC_TITLES.get(k, k.replace("_", " ").capitalize()), v)
        for k, v in (metrics.items() if isinstance(metrics, dict) else [])
        if not isinstance(v, dict | list)
    ]
    cv_rows = []
    cv = r.get("cross_validation")
    if isinstance(cv, dict):
        chosen = r.get("recipe")
        cv = {k: v if isinstance(v, dict) else {} for k, v in cv.items()}
        for recipe, scores in sorted(
            cv.items(), key=lambda kv: -(_finite(kv[1].get("auc_mean")) or 0.0)
        ):
            cv_rows.append(
                {
                    "recipe": recipe,
                    "mean": scores.get("auc_mean"),
                    "std": scores.get("auc_std"),
                    "chosen": recipe == chosen,
                }
            )
    importance = []
    features = r.get("feature_importance")
    if isinstance(features, list):
        top = [f for f in features if isinstance(f, dict)][:10]
        peak = max([_finite(f.get("importance")) or 0.0 for f in top] + [0.0])
        for f in top:
            value = _finite(f.get("importance")) or 0.0
            share = max(0.0, value) / peak if peak > 0 else 0.0
            importance.append(
                {"feature": f.get("feature", ""), "value": value, "width": f"{100 * share:.1f}"}
            )
    recipe = r.get("recipe")
    recipe_facts = []
    if isinstance(recipe, dict):
        recipe_facts = [(title, recipe[k]) for k, title in _RECIPE_FACTS if k in recipe]
    threshold = _finite(r.get("threshold"))
    positive = classes[1] if len(classes) == 2 else None
    dataset = r.get("dataset") if isinstance(r.get("dataset"), dict) else {}
    return {
        "model": r.get("model") or f"{name}:{version}",
        "name": name,
        "version": version,
        "model_status": model_status,
        "metrics": rows,
        "threshold": threshold,
        "positive": positive,
        "epochs_run": _int(r.get("epochs_run")),
        "best_epoch": _int(r.get("best_epoch")),
        "wall": _duration(r.get("wall_s")) if r.get("wall_s") is not None else None,
        "recipe": _recipe_of(run),
        "recipe_facts": recipe_facts,
        "cv": cv_rows,
        "importance": importance,
        "dataset": dataset,
    }


def _dataset_options(db: Session) -> list[dict[str, Any]]:
    rows = db.execute(
        select(Dataset.name, Dataset.kind, Dataset.n_items).order_by(Dataset.name).limit(1000)
    ).all()
    return [{"name": r.name, "kind": r.kind, "n_items": r.n_items} for r in rows]


def _training_page(
    request: Request,
    db: Session,
    ws: WebSession,
    *,
    page: int = 1,
    form: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    q = select(Job).where(Job.kind == TRAIN_KIND)
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    jobs_ = db.scalars(
        q.order_by(Job.created_at.desc(), Job.id)
        .limit(TRAINING_PAGE_SIZE)
        .offset((page - 1) * TRAINING_PAGE_SIZE)
    ).all()
    runs = [TrainingRunPublic.of(j) for j in jobs_]
    facts = _dataset_facts(db, {str(r.params.get("dataset", "")) for r in runs})
    items = []
    for run in runs:
        ref = str(run.params.get("dataset", ""))
        result = run.result or {}
        items.append(
            {
                "run": run,
                "dataset": facts.get(ref, {}).get("name") or ref,
                "recipe": _recipe_of(run),
                "progress": _progress_text(run),
                "best_auc": _best_auc(run),
                "model": result.get("model"),
                "model_name": result.get("name"),
            }
        )
    options = _dataset_options(db) if ws.is_admin else []
    return render(
        request,
        "training.html",
        ws=ws,
        status=status,
        items=items,
        pages=Pagination(page, TRAINING_PAGE_SIZE, total, {}),
        datasets=options,
        recipes=_recipe_choices() if ws.is_admin else {},
        form=form or {"dataset": "", "recipe": "", "epochs": "", "seed": "0", "model_name": ""},
        error=error,
    )


@router.get("/training", response_class=HTMLResponse)
def training_page(
    request: Request,
    db: SessionDep,
    ws: WebSessionDep,
    page: QueryStr = None,
    dataset: QueryStr = None,
) -> Response:
    form = {
        "dataset": (dataset or "").strip()[:64],
        "recipe": "",
        "epochs": "",
        "seed": "0",
        "model_name": "",
    }
    return _training_page(request, db, ws, page=parse_page(page), form=form)


def _train_request(form: dict[str, str]) -> TrainRequest | str:
    """The form as a TrainRequest, or what is wrong with it (check_request checks the rest)."""
    if not form["dataset"]:
        return "Choose a dataset."
    if len(form["dataset"]) > 64 or len(form["recipe"]) > 64 or len(form["model_name"]) > 64:
        return "Dataset, recipe and model name are at most 64 characters each."
    epochs: int | None = None
    if form["epochs"]:
        try:
            epochs = int(form["epochs"])
        except ValueError:
            return "Epochs: give a whole number from 1 to 500, or leave it empty."
    try:
        seed = int(form["seed"] or 0)
    except ValueError:
        seed = -1
    if not 0 <= seed <= _SEED_MAX:
        return f"Seed: give a whole number from 0 to {_SEED_MAX}."
    return TrainRequest(
        dataset=form["dataset"],
        recipe=form["recipe"] if form["recipe"] not in ("", "default") else None,
        epochs=epochs,
        seed=seed,
        model_name=form["model_name"] or None,
    )


@router.post("/training", response_class=HTMLResponse)
def training_submit(
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    dataset: FormStr = None,
    recipe: FormStr = None,
    epochs: FormStr = None,
    seed: FormStr = None,
    model_name: FormStr = None,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    given = {
        "dataset": dataset,
        "recipe": recipe,
        "epochs": epochs,
        "seed": seed,
        "model_name": model_name,
    }
    form = {k: (v or "").strip()[:200] for k, v in given.items()}
    req = _train_request(form)
    if isinstance(req, str):
        return _training_page(request, db, ws, form=form, error=req, status=422)
    try:
        ds = check_request(db, req)
    except jobs.JobError as exc:
        detail = exc.detail.replace("model_name:", "model name:")  # the API's field name
        message = detail[:1].upper() + detail[1:]
        return _training_page(request, db, ws, form=form, error=message, status=exc.status_code)
    job = jobs.submit_audited(
        db,
        request_context(request, ws.username),
        kind=TRAIN_KIND,
        action="training.submit",
        params=req.to_params(),
        details={
            **req.to_params(),
            "dataset": ds.name,
            "dataset_hash": ds.content_hash,
            "via": "web",
        },
    )
    db.commit()
    if state.jobs is not None:
        state.jobs.notify()
    return _redirect(f"/training/{job.id}")


def _run_page(
    request: Request,
    db: Session,
    state: AppState,
    ws: WebSession,
    run_id: str,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    try:
        run = TrainingRunPublic.of(jobs.get(db, run_id, kind=TRAIN_KIND))
    except jobs.JobNotFound:
        raise PageError(
            404, "Training run not found", "This training run does not exist.", ws
        ) from None
    ref = str(run.params.get("dataset", ""))
    ds = _dataset_facts(db, {ref}).get(ref, {})
    kind = ds.get("kind") or ("table" if (run.result or {}).get("cross_validation") else None)
    history = run.progress.get("history")
    history = [h for h in history if isinstance(h, dict)] if isinstance(history, list) else []
    live = run.status in _LIVE_STATUSES
    span = _int(run.progress.get("epochs")) or 0
    if not live:  # a finished run's axis ends at its last epoch
        span = max([1, *(e for h in history if (e := _int(h.get("epoch"))) is not None)])
    now = datetime.now(UTC)
    chart = None
    if kind != "table" and (history or live):
        chart = _chart(history, span, _int(run.progress.get("best_epoch")))
    return render(
        request,
        "training_run.html",
        ws=ws,
        status=status,
        run=run,
        live=live,
        dataset_name=ds.get("name") or ref,
        dataset_kind=kind,
        recipe=_recipe_of(run),
        numbers=_live(run, now),
        now_ms=int(now.timestamp() * 1000),
        chart=chart,
        history=history,
        result=_result_view(state, run, list(ds.get("classes") or [])),
        can_cancel=ws.is_admin and live and not run.cancel_requested,
        notice=notice,
        error=error,
    )


@router.get("/training/{run_id}", response_class=HTMLResponse)
def training_run_page(
    run_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: WebSessionDep,
    done: QueryStr = None,
) -> Response:
    notice = None
    if done == "cancel":
        try:
            job = jobs.get(db, run_id, kind=TRAIN_KIND)
        except jobs.JobNotFound:
            job = None
        if job is not None and job.status == "cancelled":
            notice = _RUN_NOTICES["cancelled" if job.started_at else "cancelled-queued"]
        elif job is not None and job.cancel_requested and job.status == "running":
            notice = _RUN_NOTICES["cancel-requested"]
    return _run_page(request, db, state, ws, run_id, notice=notice)


@router.post("/training/{run_id}/cancel", response_class=HTMLResponse)
def training_cancel(
    run_id: str,
    request: Request,
    db: SessionDep,
    state: StateDep,
    ws: AdminSession,
    csrf_token: FormStr = None,
) -> Response:
    require_csrf(request, db, state, ws, csrf_token)
    try:
        job = jobs.cancel(db, run_id, kind=TRAIN_KIND)
    except jobs.JobNotFound:
        raise PageError(
            404, "Training run not found", "This training run does not exist.", ws
        ) from None
    except jobs.JobError as exc:
        db.rollback()
        message = exc.detail[:1].upper() + exc.detail[1:]
        return _run_page(request, db, state, ws, run_id, error=f"{message}.", status=409)
    audit.append(
        db,
        request_context(request, ws.username),
        audit.Entry("training.cancel", object_type="job", object_id=job.id, details={"via": "web"}),
    )
    db.commit()
    return _redirect(f"/training/{run_id}?done=cancel")


# --- administration ---------------------------------------------------------------------------


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
    rows, total = users.list_users(db=db, limit=500)
    return render(
        request,
        "users.html",
        ws=ws,
        status=status,
        users=rows,
        total=total,
        roles=[r.value for r in Role],
        error=error,
        notice=notice,
        form=form or {"username": "", "role": Role.clinician.value},
    )


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


_FIELD_HELP = {
    "username": "Username: 3 to 64 characters, letters, digits and _ . @ - only.",
    "password": "Password: at least 10 characters.",
    "role": "Role: choose admin, clinician or viewer.",
}


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
        problem = " ".join(_FIELD_HELP.get(f, f"{f}: invalid") for f in fields)
        return _users_page(request, db, ws, error=problem, form=form, status=422)
    try:
        user = users.create(
            db=db,
            ctx=request_context(request, ws.username),
            username=body.username,
            password=body.password,
            role=body.role,
        )
    except users.UserExists as exc:
        return _users_page(request, db, ws, error=str(exc), form=form, status=409)
    return _redirect(f"/admin/users?created={user.id}")


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
        raise PageError(404, "User not found", "This user does not exist.", ws)
    if role and role not in {r.value for r in Role}:
        return _users_page(request, db, ws, error=_FIELD_HELP["role"], status=422)
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
    except users.LastAdmin as exc:
        db.rollback()
        message = str(exc)
        return _users_page(
            request, db, ws, error=f"{message[:1].upper()}{message[1:]}.", status=409
        )
    return _redirect(f"/admin/users?updated={user.id}")


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
        db,
        limit=AUDIT_PAGE_SIZE,
        offset=(number - 1) * AUDIT_PAGE_SIZE,
        actor=params["actor"] or None,
        action=params["action"] or None,
    )
    return render(
        request,
        "audit.html",
        ws=ws,
        events=rows,
        params=params,
        chain=audit.verify_chain(db),
        actions=KNOWN_ACTIONS,
        pages=Pagination(number, AUDIT_PAGE_SIZE, total, params),
    )


# --- mounting ---------------------------------------------------------------------------------


async def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    target = exc.next_url
    url = "/login" if not target or target == "/" else f"/login?{urlencode({'next': target})}"
    return _redirect(url)


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return render(
        request,
        "error.html",
        ws=exc.ws,
        status=exc.status_code,
        code=exc.status_code,
        title=exc.title,
        message=exc.message,
    )


def browser_not_found(request: Request) -> Response | None:
    """An HTML 404 page for a browser that asks for a page path that does not exist."""
    path = request.url.path
    if path.startswith(("/api/", "/static/", "/docs")) or "text/html" not in request.headers.get(
        "accept", ""
    ):
        return None
    return render(
        request,
        "error.html",
        ws=None,
        status=404,
        code=404,
        title="Page not found",
        message="There is no page at this address.",
    )


def mount(app: FastAPI) -> None:
    """Add the pages, /static (CSS, JS, icons only) and the page error handlers to `app`."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageError, _page_error)
